"""The run viewer's page: one self-contained HTML file (the data as JSON, view.js and view.css
inlined from the package), and a loopback server that rebuilds it as a run's answers arrive."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emi.core.atomic import write_atomic
from emi.report.view_data import payload

ASSETS = Path(__file__).parent / "view_assets"


def _embed(data: dict[str, Any]) -> str:
    """JSON that is safe inside a <script> element (no '</', no U+2028/9 surprises)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
    return text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _clean(x: Any) -> Any:
    """NaN and infinities (JSON has none) as null."""
    if isinstance(x, float):
        return x if x == x and x not in (float("inf"), float("-inf")) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def page(data: dict[str, Any]) -> str:
    css = (ASSETS / "view.css").read_text(encoding="utf-8")
    js = (ASSETS / "view.js").read_text(encoding="utf-8")
    title = "emi view: " + ", ".join(r["name"] for r in data["runs"])
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'\">"
            f"<title>{_html(title)}</title><style>{css}</style></head><body>"
            "<noscript>This page needs JavaScript to show the run.</noscript><div id=\"app\">loading…</div>"
            f"<script id=\"emi-data\" type=\"application/json\">{_embed(_clean(data))}</script>"
            f"<script>{js}</script></body></html>")


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_page(runs: Sequence[Path], out: Path) -> int:
    """Write the page for ``runs`` to ``out`` atomically; its size in bytes."""
    text = page(payload(runs))
    write_atomic(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return len(text.encode())


def serve(runs: Sequence[Path], port: int = 0, seconds: float = 3600.0, announce: Any = print) -> None:
    """Serve the page on 127.0.0.1 (the data rebuilt from disk on each request, so a run in progress
    shows its new answers; the page polls /data.json) until Ctrl-C or ``seconds`` pass."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/data.json"):
                body, kind = _embed(_clean(payload(runs, live=True))).encode(), "application/json"
            elif self.path in ("/", "/index.html"):
                body, kind = page(payload(runs, live=True)).encode(), "text/html; charset=utf-8"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    announce(f"serving http://127.0.0.1:{server.server_address[1]}/ for {seconds:.0f} s (Ctrl-C stops it)")
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end and thread.is_alive():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
