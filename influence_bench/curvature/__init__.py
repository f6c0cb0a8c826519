"""Curvature: exact per-example quantities (torch.func), the eigen form every entry shares, and the
single adapter to curvlinops."""
