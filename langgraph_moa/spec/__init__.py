"""What runs, as plain data: the topology spec and presets, the provider table, model facts
(prices and context windows), and reading spec files. Depends on nothing else in the package
but errors.

No names here: a user imports the spec's (:class:`~langgraph_moa.Topology`, its loaders,
:func:`~langgraph_moa.register_provider`...) from the package root."""
