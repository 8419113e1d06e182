"""Network shells: the HTTP server (h11 on trio), the federation client (httpcore), X-Matrix
request authentication over HTTP, and the error table. Federation routes sit on these."""
