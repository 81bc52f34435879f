"""Operator tools: the `segrec` command, the `segrec run` supervisor and the demo shop."""
