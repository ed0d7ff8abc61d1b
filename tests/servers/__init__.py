"""Loopback test servers speaking the external services' protocols, plus synthetic data.

- :mod:`.base` -- what the servers share: server thread, request log, transport faults, CLI.
- :mod:`.hsc_cas` -- HSC-SSP CAS catalogue SQL job API backed by sqlite3.
- :mod:`.hsc_das` -- HSC-SSP DAS cutout service (list POST, tar stream reply).
- :mod:`.vsa` -- VISTA Science Archive ``GetImage`` cutouts.
- :mod:`.images` -- synthetic cutout providers and the mock-sky provider for the CLIs.
- :mod:`.synthetic` -- small random catalogues following ``contracts.CATALOG_SCHEMA``.
- :mod:`.clients` -- client-side test helpers (recording ``sleep``, loopback session).
"""
