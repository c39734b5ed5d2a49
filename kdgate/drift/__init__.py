"""`kdgate demo drift`: the online re-distillation loop on a real shift, with every real part (see `run`)."""
