"""Physics of the mock sky: synthetic photometry, IGM, dust, colour tracks, number counts."""

import numpy as np
import pytest
from astropy.table import Table

from workflow_scripts.contracts import flux_to_mag
from workflow_scripts.sky import SkyBox, SkyConfig
from workflow_scripts.sky import populations as P
from workflow_scripts.sky.extinction import standard_coeffs
from workflow_scripts.sky.grids import brown_dwarf_table
from workflow_scripts.sky.igm import igm_transmission
from workflow_scripts.sky.photometry import ALL_BANDS, DATA_DIR, WAVE, ab_mag, effective_wavelength
from workflow_scripts.sky.seds import quasar_flam


@pytest.mark.parametrize("band,lam", [("g", 4844), ("r", 6259), ("i", 7730), ("z", 8912), ("y", 9787)])
def test_effective_wavelength_matches_speclite(band, lam):
    assert abs(effective_wavelength(band) - lam) < 3.0


def test_flat_fnu_has_zero_colours():
    m = ab_mag(1.0 / WAVE**2)  # f_lambda ∝ λ^-2 is flat in f_nu
    assert np.allclose(m - m[0], 0.0, atol=1e-6)
    assert len(m) == len(ALL_BANDS)


def test_igm_inoue2014():
    lam65 = np.linspace(1100, 1210, 200) * 7.5
    assert igm_transmission(lam65, 6.5).mean() < 0.01
    lam3 = np.linspace(1050, 1180, 200) * 4.0
    assert 0.7 <= igm_transmission(lam3, 3.0).mean() <= 0.8
    assert np.all(igm_transmission(np.array([1300.0 * 7.5]), 6.5) == 1.0)


def test_extinction_coefficients_close_to_hsc():
    hsc = {"g": 3.24, "r": 2.28, "i": 1.63, "z": 1.26, "y": 1.08}
    k = standard_coeffs()
    for b, v in hsc.items():
        assert abs(k[b] * P.SFD_TO_TRUE / v - 1) < 0.05, (b, k[b])


def _colours(z):
    m = ab_mag(quasar_flam(z))
    return m[2] - m[3], m[3] - m[4]

def test_quasar_colour_track():
    iz55, _ = _colours(5.5)
    iz62, zy62 = _colours(6.2)
    _, zy68 = _colours(6.8)
    _, zy60 = _colours(6.0)
    assert iz55 < 1.0 and iz62 > 1.5  # i-dropout above z≈5.7
    assert zy60 < 0.5 and zy68 > 0.8  # z-dropout above z≈6.6
    izs = [_colours(z)[0] for z in (5.0, 5.5, 5.8, 6.1)]
    assert np.all(np.diff(izs) > 0)


def test_brown_dwarf_colours_vs_type():
    tab = brown_dwarf_table()
    zy = tab.absmag[:, 3] - tab.absmag[:, 4]
    yj = tab.absmag[:, 4] - tab.absmag[:, 5]
    spt = tab.spt_num
    # coarse monotonic rise: M7-M9 < L < T
    for col in (zy, yj):
        assert col[spt < 20].mean() < col[(spt >= 20) & (spt < 30)].mean() < col[spt >= 30].mean() + 0.05
    assert zy[spt >= 34].mean() > zy[spt < 20].mean() + 0.6
    # Best et al. 2018 (PS1 ≈ HSC; 2MASS J Vega -> AB +0.91): within the scatter + system offsets
    best = Table.read(DATA_DIR / "bd_colours_best2018_ps1.ecsv", format="ascii.ecsv")
    ref = {float(r["spt_num"]): (float(r["z_y_ps1"]), float(r["y_ps1_J_2mass"]) - 0.91) for r in best}
    for k, sp in enumerate(spt):
        assert abs(zy[k] - ref[sp][0]) < 0.35, tab.types[k]
        assert abs(yj[k] - ref[sp][1]) < 0.3, tab.types[k]
    # Skrzypek et al. 2015 (SDSS z, MKO Y: other systems): same ordering with spectral type
    sk = Table.read(DATA_DIR / "bd_colours_skrzypek2015.ecsv", format="ascii.ecsv")
    rows = [r for r in sk if float(r["spt_num"]) in set(spt)]
    ours = [zy[int(np.flatnonzero(spt == float(r["spt_num"]))[0])] for r in rows]
    assert np.corrcoef(np.argsort(np.argsort(ours)), np.argsort(np.argsort([r["z_Y"] for r in rows])))[0, 1] > 0.8
    # and i-z from the Best et al. 2018 anchoring rises from M7 to L5
    iz = tab.absmag[:, 2] - tab.absmag[:, 3]
    assert iz[spt == 25][0] > iz[spt == 17][0]


def test_highz_quasar_densities_match_science_md():
    sky = SkyConfig(enrichment=1.0)
    box = SkyBox(0.0, 360.0, -30.0, 30.0)  # ~1e4 deg², only z > 5.6 quasars (fast)
    q = P.draw_quasars(np.random.default_rng(5), box, sky, zmin=5.6)
    z, m = q["redshift"], flux_to_mag(q["flux_true"])
    a = box.area_deg2
    n1 = np.sum((z > 5.7) & (z < 6.5) & (m[:, 3] < 24)) / a
    n2 = np.sum((z > 6.5) & (z < 7.2) & (m[:, 4] < 24)) / a
    assert abs(n1 / 0.2 - 1) < 0.3, n1
    assert abs(n2 / 0.04 - 1) < 0.3, n2


def test_brown_dwarf_densities_match_science_md():
    sky = SkyConfig(enrichment=1.0)
    box = SkyBox(140.0, 160.0, -5.0, 10.0)  # ~300 deg² around COSMOS latitude
    bd = P.draw_brown_dwarfs(np.random.default_rng(7), box, sky)
    m = flux_to_mag(bd["flux_true"])
    a = box.area_deg2
    nl = np.sum((bd["subclass"] == "L") & (m[:, 3] < 24)) / a
    nt = np.sum((bd["subclass"] == "T") & (m[:, 3] < 24)) / a
    assert 20 < nl < 40, nl
    assert 1 <= nt <= 7, nt


def test_enrichment_only_multiplies_highz_quasars():
    box = SkyBox(150.0, 152.0, 1.0, 3.0)
    lo = P.draw_quasars(np.random.default_rng(1), box, SkyConfig(enrichment=1.0))
    hi = P.draw_quasars(np.random.default_rng(1), box, SkyConfig(enrichment=300.0))
    nlo = [np.sum(p["subclass"] == "lowz") for p in (lo, hi)]
    assert abs(nlo[0] - nlo[1]) < 5 * np.sqrt(nlo[0])
    nh = np.sum(hi["subclass"] == "highz")
    assert nh > 50 * max(np.sum(lo["subclass"] == "highz"), 1)
    assert np.all(hi["redshift"][hi["subclass"] == "highz"] > 5.6)
    assert np.allclose(hi["enrichment_weight"][hi["subclass"] == "highz"], 1 / 300)
    assert np.all(hi["enrichment_weight"][hi["subclass"] == "lowz"] == 1.0)


def test_enrichment_also_multiplies_lyman_break_galaxies():
    box = SkyBox(150.0, 152.0, 1.0, 3.0)
    lo = P.draw_lbgs(np.random.default_rng(1), box, SkyConfig(enrichment=1.0))
    hi = P.draw_lbgs(np.random.default_rng(1), box, SkyConfig(enrichment=300.0))
    assert 150 < len(hi["redshift"]) / max(len(lo["redshift"]), 0.5) < 600
    assert np.allclose(hi["enrichment_weight"], 1 / 300)
