"""The guest side: MMIO and interrupts as a driver sees them, and the e1000 driver."""
