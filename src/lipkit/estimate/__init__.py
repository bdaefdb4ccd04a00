"""Lipschitz constant estimation for any trained network (sound upper and lower bounds)."""
