"""A raw HTTP/1.1 client for the tests, imported by their inline scripts.

The bytes go out exactly as a test writes them (pipelined, malformed, methods no library
sends), over plain TCP, TLS or mutual TLS to 127.0.0.1; answers are read as they come, and
whether the server then closes the connection is part of the result.
"""
import socket
import ssl


def connect(port, ca=None, cert=None, key=None, timeout=30):
    """A connection to 127.0.0.1:port; TLS when `ca` is given, mutual with `cert`/`key`."""
    sock = socket.create_connection(("127.0.0.1", int(port)))
    if ca:
        context = ssl.create_default_context(cafile=ca)
        if cert:
            context.load_cert_chain(cert, key)
        sock = context.wrap_socket(sock, server_hostname="localhost")
    sock.settimeout(timeout)
    return sock


def complete(data):
    """How many whole answers `data` holds: framed by Content-Length (none: no body) or chunked."""
    count = 0
    while True:
        head, found, rest = data.partition(b"\r\n\r\n")
        if not found:
            return count
        lines = head.split(b"\r\n")[1:]
        if any(line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower() for line in lines):
            end = rest.find(b"\r\n0\r\n\r\n")
            if not rest.startswith(b"0\r\n\r\n") and end < 0:
                return count
            data = rest[5:] if rest.startswith(b"0\r\n\r\n") else rest[end + 7:]
        else:
            length = [int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")]
            if len(rest) < (length[0] if length else 0):
                return count
            data = rest[(length[0] if length else 0):]
        count += 1


def read_head(sock):
    """Reads up to the end of the first head that arrives (an interim `100 Continue`, say)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_answers(sock, expected=1, closes=False, settle=2):
    """Reads until `expected` whole answers came or the connection ended (or the socket's
    timeout passed); returns the bytes and whether the server closed the connection.

    A connection due to close (`closes`) is given the socket's whole timeout to do it: a
    loaded machine may take seconds. One due to stay open is watched for `settle` seconds,
    which can only miss a late close, never invent one; with `settle=None`, not watched (the
    connection is used again).
    """
    received, closed = b"", False
    timeout = sock.gettimeout()
    try:
        while complete(received) < expected:
            chunk = sock.recv(65536)
            if not chunk:
                return received, True
            received += chunk
        if closes or settle is not None:
            sock.settimeout(timeout if closes else settle)
            closed = sock.recv(1) == b""
    except socket.timeout:
        pass
    except (ConnectionResetError, ssl.SSLError):
        closed = True
    finally:
        sock.settimeout(timeout)
    return received, closed


def read_until_close(sock):
    """Everything until the server closes (a body ended by the close); None if it did not
    close within the socket's timeout."""
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
    except socket.timeout:
        return None
