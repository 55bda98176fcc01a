"""The engine: base classes, registry, rules, numerics and the transforms.

Private: users import from `jaxcons`, `jaxcons.constraints` and `jaxcons.regularizers`. Nothing
here imports the catalogue (`jaxcons.constraints`, `jaxcons.regularizers`) or an adapter
(`jaxcons.flax`, `jaxcons.keras`); they import the engine.
"""
