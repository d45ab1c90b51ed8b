"""Real photos (scikit-image's sample images) and a local HTTP server for them, on 127.0.0.1."""
from __future__ import annotations

import io
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def photo(name: str, variant: int = 0) -> np.ndarray:
    """An RGB uint8 photo from scikit-image; variants are crops and mirrors of it."""
    from skimage import data

    image = getattr(data, name)()
    if variant:
        height, width = image.shape[:2]
        top, left = (variant * 37) % (height // 3), (variant * 53) % (width // 3)
        image = image[top : top + 2 * height // 3, left : left + 2 * width // 3]
        if variant % 2:
            image = image[:, ::-1]
    return np.ascontiguousarray(image)


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class ImageServer:
    """Serves ``routes`` (path -> body) with status 200 and anything else with 404, on an
    ephemeral port of 127.0.0.1; ``fail_first[path] = n`` answers 503 to the first n requests
    of ``path``. ``requests`` counts the requests per path."""

    def __init__(self, routes: dict[str, bytes], fail_first: dict[str, int] | None = None):
        self.routes = dict(routes)
        self.fail_first = Counter(fail_first or {})
        self.requests: Counter = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests[self.path] += 1
                if server.fail_first[self.path] > 0:
                    server.fail_first[self.path] -= 1
                    self.send_error(503)
                elif self.path in server.routes:
                    body = server.routes[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def __enter__(self) -> "ImageServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
