"""A plugin for the tests' real forward proxy (proxy.py): it marks and logs what it forwards.

proxy.py calls ``handle_client_request`` for every request it forwards in
clear, including each one sent over a kept-alive connection (its access log
has one line per connection only), and once for each ``CONNECT``.
"""

from __future__ import annotations

import logging

from proxy.http.parser import HttpParser
from proxy.http.proxy import HttpProxyBasePlugin

MARK = b"X-Test-Proxy"  # added to every request forwarded in clear: the mock sees it

logger = logging.getLogger(__name__)


class MarkRequests(HttpProxyBasePlugin):
    def handle_client_request(self, request: HttpParser) -> HttpParser:
        method = (request.method or b"?").decode()
        target = f"{(request.host or b'?').decode()}:{request.port}{(request.path or b'').decode()}"
        if method == "CONNECT":
            target = f"{(request.host or b'?').decode()}:{request.port}"
        else:
            request.add_header(MARK, b"proxy.py")
        logger.info("forwarded %s %s", method, target)
        return request
