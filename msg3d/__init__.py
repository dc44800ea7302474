"""MS-G3D skeleton action recognition, numerically faithful to PYSKL's implementation.

Importing the package is cheap (no torch): subpackages are imported on demand, so that
command-line stages that do not need torch (raw conversion, tables) start fast.
"""

__version__ = "0.1.0"
