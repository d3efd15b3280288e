"""The benchmark runner (edit → evaluate → restore), resumable results store, reports and charts."""
