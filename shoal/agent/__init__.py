"""The Shoal node agent: runs the start task and tasks on one compute node (see README.md)."""
