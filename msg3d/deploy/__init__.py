"""Using a trained model: ``msg3d predict`` (class probabilities for new skeletons) and
``msg3d export-onnx`` (a self-contained ONNX file and the facts a consumer needs beside it).

Modules: ``applied`` (what applying a checkpoint needs and where each fact comes from),
``inputs`` (raw files, folders, pickles and Kinetics clips as annotations), ``windows`` (a long
recording cut into running windows), ``backends`` (the network through PyTorch or onnxruntime),
``predict`` and ``onnx_export`` (the two commands).
"""
