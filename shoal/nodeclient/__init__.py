"""The control plane's outbound calls to node agents (the other direction of docs/agent-protocol.md)."""
