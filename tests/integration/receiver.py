# A notification receiver for the tests, on loopback: records each request
# (headers, body, whether its signature is right) as a JSON line, and answers
# with the status in the file STATUS (200 when absent). With CERT and KEY
# (PEM files), it speaks https.
import hashlib, hmac, http.server, json, os, ssl, sys

out, status_file, secret = sys.argv[1], sys.argv[2], sys.argv[3].encode()
tls = sys.argv[4:6]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            status = int(open(status_file).read().strip())
        except (OSError, ValueError):
            status = 200
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        record = {
            "path": self.path,
            "status": status,
            "event": self.headers.get("X-Webjobs-Event"),
            "delivery": self.headers.get("X-Webjobs-Delivery"),
            "signed": hmac.compare_digest(self.headers.get("X-Webjobs-Signature", ""), expected),
            "body": json.loads(body),
        }
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if tls:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls[0], tls[1])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
