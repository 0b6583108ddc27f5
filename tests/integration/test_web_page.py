"""The browser page the edge serves at `/`, driven by a real headless Chromium.

Chromium's fake media device plays a WAV file as the microphone (it loops the file). The page
is loaded from the deployed edge, Start is clicked, and the page must capture the speech through
its AudioWorklet, stream it over the WebSocket protocol (docs/websocket-protocol.md), receive the
caller's final transcript and show it in the transcript pane, and receive agent audio.

Needs the Debian `chromium` and `chromium-driver` packages (scripts/install_test_packages.sh) and
`selenium`; skipped when any is missing. The page's test hooks are on `window.parley`.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import time
import wave
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "services" / "edge" / "web" / "index.html"
HELLO_WAV = ROOT / "services" / "assets" / "hello.wav"

MIC_SAMPLE_RATE = 48_000
LEAD_SILENCE_S, TRAIL_SILENCE_S = 1.0, 3.0
TIMEOUT_S = 120  # speech, endpointing, ASR, LLM and TTS on a 2-core machine, with room to spare


# --- the page is one self-contained file --------------------------------------------------------

def test_page_is_self_contained():
    html = PAGE.read_text(encoding="utf-8")
    external = re.findall(r"(?i)\b(?:https?|wss?)://[^\s\"'`<>)]+", html)
    assert not external, f"the page references external URLs (it must work offline): {external}"
    # Nothing else to fetch either (data: URIs aside): no script, style or image files, no CSS imports.
    markup = re.sub(r"(?is)(<script\b[^>]*>).*?(</script>)", r"\1\2", html)  # script bodies are code, not markup
    links = re.findall(r"""(?i)<[a-z][^>]*?\s(?:src|href)\s*=\s*["']?([^"'\s>]*)""", markup)
    links += re.findall(r"""(?i)\burl\s*\(\s*["']?([^"')\s]*)""", markup)
    fetched = [link for link in links if not link.lower().startswith(("data:", "#"))]
    assert not fetched, f"the page loads separate resources: {fetched}"
    assert not re.search(r"(?i)@import\b|<iframe\b", html), "the page imports or embeds another document"


# --- the real browser against the real edge -----------------------------------------------------

def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM, CHROMEDRIVER = _find("chromium", "chromium-browser"), _find("chromedriver")
# Checked at collection, so that a missing browser skips before the cluster fixture starts Ray.
if importlib.util.find_spec("selenium") is None:
    BROWSER_MISSING = "selenium is not installed (pip install selenium)"
elif not CHROMIUM or not CHROMEDRIVER:
    BROWSER_MISSING = "the chromium and chromedriver binaries are not on PATH (run scripts/install_test_packages.sh)"
else:
    BROWSER_MISSING = ""


def _fake_mic_wav(path: Path) -> Path:
    """hello.wav at 48 kHz with leading and trailing silence (Chromium loops the file)."""
    import soxr

    with wave.open(str(HELLO_WAV), "rb") as src:
        assert src.getnchannels() == 1 and src.getsampwidth() == 2, "hello.wav must be 16-bit mono"
        rate = src.getframerate()
        speech = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    speech = soxr.resample(speech, rate, MIC_SAMPLE_RATE)
    audio = np.concatenate([np.zeros(int(LEAD_SILENCE_S * MIC_SAMPLE_RATE), np.float32), speech,
                            np.zeros(int(TRAIL_SILENCE_S * MIC_SAMPLE_RATE), np.float32)])
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return path


@pytest.fixture
def browser(tmp_path, edge_http_url):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    wav = _fake_mic_wav(tmp_path / "fake_mic.wav")
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(edge_http_url))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
        # getUserMedia needs a secure context; localhost is one, other http hosts are made one.
        f"--unsafely-treat-insecure-origin-as-secure={origin}",
        "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


PROGRESS_JS = """
const p = window.parley || {};
const finals = (p.events || []).filter(e => e.type === "transcript" && e.final).map(e => e.text || "");
const lines = [...document.querySelectorAll("#transcript .line.caller:not(.partial) .text")].map(e => e.textContent);
return {state: p.state, closeCode: p.closeCode === undefined ? null : p.closeCode, audioBytes: p.audioBytes || 0,
        finals: finals, callerLines: lines, pane: document.getElementById("transcript").textContent,
        status: document.getElementById("status").textContent,
        types: (p.events || []).map(e => e.type),
        // an agent reply (not the greeting) started after the caller's first final transcript
        replied: (p.events || []).some((e, i, all) => e.type === "agent_audio_start"
            && all.slice(0, i).some(f => f.type === "transcript" && f.final))};
"""


def _norm(text: str) -> str:
    return " ".join(text.split())


def _diagnostics(driver, tmp_path: Path, progress: dict) -> str:
    shot = tmp_path / "page.png"
    try:
        driver.save_screenshot(str(shot))
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    try:
        console = "\n".join(entry["message"] for entry in driver.get_log("browser")[-20:])
    except Exception:  # noqa: BLE001
        console = "(no console log)"
    return f"page progress: {progress}\nscreenshot: {shot}\nbrowser console:\n{console}"


@pytest.mark.cluster
@pytest.mark.skipif(bool(BROWSER_MISSING), reason=BROWSER_MISSING)
def test_page_talks_to_the_edge(browser, edge_http_url, edge_token, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{edge_http_url.rstrip('/')}/?token={quote(edge_token, safe='')}")
    assert driver.execute_script("return window.parley && window.parley.state") == "idle"
    assert driver.find_element(By.ID, "token").get_attribute("value") == edge_token, \
        "the token field is not prefilled from ?token="

    started = time.monotonic()
    driver.find_element(By.ID, "start").click()
    progress: dict = {}
    while True:
        progress = driver.execute_script(PROGRESS_JS)
        heard = [text for text in progress["finals"] if text.strip()]
        if heard and progress["audioBytes"] > 0 and progress["replied"]:
            break
        if progress["state"] == "closed":
            pytest.fail("the conversation closed early\n" + _diagnostics(driver, tmp_path, progress))
        if time.monotonic() - started > TIMEOUT_S:
            pytest.fail(f"no final transcript and agent audio within {TIMEOUT_S} s\n"
                        + _diagnostics(driver, tmp_path, progress))
        time.sleep(0.25)
    elapsed = time.monotonic() - started

    assert progress["state"] == "live", progress
    events = driver.execute_script("return window.parley.events")
    assert events[0]["type"] == "ready", events[:3]
    # The final transcript is in the pane, as a final (not a grey partial) caller line.
    pane = _norm(progress["pane"])
    for text in heard:
        assert _norm(text) in pane, f"final transcript {text!r} not shown in the pane: {pane!r}"
        assert _norm(text) in [_norm(line) for line in progress["callerLines"]], progress["callerLines"]
    assert progress["audioBytes"] % 2 == 0
    driver.save_screenshot(str(tmp_path / "page_live.png"))

    driver.find_element(By.ID, "stop").click()
    deadline = time.monotonic() + 10
    while driver.execute_script("return window.parley.state") != "closed" and time.monotonic() < deadline:
        time.sleep(0.1)
    final = driver.execute_script(PROGRESS_JS)
    assert final["state"] == "closed" and final["closeCode"] == 1000, _diagnostics(driver, tmp_path, final)
    print(f"browser: transcript and agent audio after {elapsed:.1f} s; {final['audioBytes']} agent audio bytes; "
          f"screenshot {tmp_path / 'page_live.png'}")
