"""Emulated hardware: the e1000 NIC and the DMA interface to guest memory."""
