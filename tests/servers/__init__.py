"""Loopback test servers speaking the external services' protocols, plus synthetic data.

- :mod:`.hsc_cas` -- HSC-SSP CAS catalogue SQL job API backed by sqlite3.
- :mod:`.synthetic` -- small random catalogues following ``contracts.CATALOG_SCHEMA``.
"""
