"""vCenter provider benchmark: veba against a VEBA-style polling loop, on govmomi's simulator."""
