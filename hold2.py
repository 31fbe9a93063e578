import socket, sys, time
port=int(sys.argv[1]); n=int(sys.argv[2]); pid=sys.argv[3]; path=sys.argv[4]
def rss():
    for l in open(f'/proc/{pid}/status'):
        if l.startswith('VmRSS'): return int(l.split()[1])
def one():
    s=socket.create_connection(('127.0.0.1',port))
    s.sendall(f'GET {path} HTTP/1.1\r\nHost: x\r\n\r\n'.encode())
    d=b''
    while b'\r\n\r\n' not in d: d+=s.recv(65536)
    return s
for _ in range(200): one().close()
time.sleep(0.5)
before=rss(); held=[one() for _ in range(n)]; time.sleep(1); after=rss()
print(path, (after-before)*1024//n, 'bytes/conn')
