"""Container HEALTHCHECK: exit 0 when the service answers GET /healthz with 200, else 1.

The image has no curl; the standard library is enough. The port is SERVICE_PORT (default 8000).
"""

import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("SERVICE_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except (OSError, urllib.error.URLError) as e:
    sys.stderr.write(f"healthcheck: {e}\n")
    sys.exit(1)
