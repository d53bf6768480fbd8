"""Import-time fixes for third-party packages that do not support current library versions."""
