#!/usr/bin/env python3
"""A tiny HTTP/1.1 upload sink for the benchmark: reads every byte of each request body
(Content-Length or chunked, answering `Expect: 100-continue`), then answers 200 with a small
JSON body naming the byte count. Keep-alive; one thread per connection.

    upload_sink.py PORT
"""
import socket
import sys
import threading

BUF = 1 << 20


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.pending = b""  # bytes read past what was consumed
        self.buf = bytearray(BUF)
        self.view = memoryview(self.buf)

    def read_until(self, marker):
        while marker not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.pending += chunk
        head, _, rest = self.pending.partition(marker)
        self.pending = rest
        return head

    def discard(self, n):
        """Reads and drops exactly n bytes."""
        take = min(n, len(self.pending))
        self.pending = self.pending[take:]
        n -= take
        while n > 0:
            got = self.sock.recv_into(self.view, min(n, BUF))
            if got == 0:
                raise ConnectionError("eof in body")
            n -= got

    def serve(self):
        while True:
            head = self.read_until(b"\r\n\r\n")
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("expect", "").lower() == "100-continue":
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            received = 0
            if "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = self.read_until(b"\r\n")
                    if size_line is None:
                        return
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        # trailers, then the empty line
                        while True:
                            line = self.read_until(b"\r\n")
                            if not line:
                                break
                        break
                    self.discard(size + 2)
                    received += size
            else:
                length = int(headers.get("content-length", "0") or 0)
                self.discard(length)
                received = length
            body = b'{"received":%d}' % received
            self.sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            if headers.get("connection", "").lower() == "close":
                return


def handle(sock):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Conn(sock).serve()
    except (ConnectionError, OSError, ValueError):
        pass
    finally:
        sock.close()


def main():
    port = int(sys.argv[1])
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(1024)
    while True:
        sock, _ = server.accept()
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
