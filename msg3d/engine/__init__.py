"""Training and testing engine (``msg3d train`` / ``msg3d test``)."""
