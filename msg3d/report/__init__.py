"""Model-zoo table and plots (``msg3d table`` / ``msg3d plot``)."""
