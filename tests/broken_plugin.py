"""A plugin module for the run tests that fails to import: the run gives it a failure row with the
traceback and finishes the other entries."""

raise RuntimeError("this plugin is deliberately broken")
