"""Triton kernels and their launch helpers (installed as ``urlstm_triton.kernels``)."""
