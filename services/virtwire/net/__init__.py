"""The frame plane: QEMU's net/ concepts (NetQueue, NetClient, hub, backends)."""
