"""Weight maps (``torch.nn.utils.parametrize`` parametrisations) that constrain a weight's norm."""
