"""The example apps. A regular package (not a namespace one) on purpose: an installed package
also called ``examples`` (e3nn and opacus ship one) would otherwise win the import, and
``uvicorn examples.fastapi_app:app`` would fail from this folder."""
