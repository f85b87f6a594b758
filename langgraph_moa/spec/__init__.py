"""What runs, as plain data: the topology spec and presets, the provider table, model facts
(prices and context windows), and reading spec files. Depends on nothing else in the package
but errors."""
