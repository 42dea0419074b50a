"""The version of this azmanagers, shown to VMs so they can install the same one."""

__version__ = "0.1.0"
