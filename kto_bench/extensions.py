"""The packages that extend the general registries from their own home: each registers its data sources,
tasks and model sources when imported (`registry.load_extensions`, on the first lookup of a registry made `extensible`).

The demo is one: everything demo-specific lives in `kto_bench/demo/`. Registering only, an extension
package imports nothing heavy (no torch): `kto-bench ls` lists its entries.
"""

PACKAGES: tuple[str, ...] = ("kto_bench.demo",)
