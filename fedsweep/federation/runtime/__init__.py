"""How the driver reaches clients: the ``Runtime`` interface, in-process and a Ray worker pool."""
