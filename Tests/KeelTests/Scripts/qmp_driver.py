#!/usr/bin/env python3
"""Drives Keel's QMP and human monitor with QEMU's own Python client (qemu.qmp, from PyPI).

usage: qmp_driver.py SCENARIO KEEL_BINARY TICKER_GUEST PWRBTN_GUEST [ACCEL]

Each scenario boots a test guest under `keel -accel ACCEL` (default kvm), talks to it and prints "PASS <scenario>"
on success; any failed check exits with a message (status 1). Run by Tests/KeelTests/QMPTests.swift.
"""
import asyncio, json, os, re, socket, sys, tempfile, time
from qemu.qmp import QMPClient, ExecuteError

SCENARIO, KEEL, TICKER, PWRBTN = sys.argv[1:5]
ACCEL = sys.argv[5] if len(sys.argv) > 5 else 'kvm'
TMP = tempfile.mkdtemp(prefix='keel-qmp-', dir='/tmp')


def check(cond, what):
    if not cond:
        raise AssertionError(what)


RUNNING = []


class Keel:
    """A keel process with its console (stdout) collected line by line."""

    async def start(self, kernel, *args, append=None):
        argv = [KEEL, '-accel', ACCEL, '-m', '64', '-kernel', kernel]
        if append:
            argv += ['-append', append]
        argv += list(args)
        self.argv = argv
        RUNNING.append(self)
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self.out = b''
        self.err = b''
        self.changed = asyncio.Condition()
        self.readers = [asyncio.ensure_future(self._read(self.proc.stdout, 'out')),
                        asyncio.ensure_future(self._read(self.proc.stderr, 'err'))]
        return self

    async def _read(self, stream, attr):
        while True:
            data = await stream.read(4096)
            if not data:
                return
            setattr(self, attr, getattr(self, attr) + data)
            async with self.changed:
                self.changed.notify_all()

    @property
    def text(self):
        return self.out.decode(errors='replace').replace('\r', '')

    def ticks(self):
        return [int(n) for n in re.findall(r'^tick (\d+)$', self.text, re.M)]

    def last_tick(self):
        t = self.ticks()
        return t[-1] if t else 0

    async def wait_until(self, pred, what, timeout=30):
        async def waiter():
            async with self.changed:
                await self.changed.wait_for(pred)
        try:
            await asyncio.wait_for(waiter(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError('timeout waiting for %s; console tail: %r; stderr: %r'
                                 % (what, self.text[-300:], self.err[-300:]))

    async def wait_for(self, s, timeout=30):
        await self.wait_until(lambda: s in self.text, repr(s), timeout)

    async def wait_tick(self, n, timeout=30):
        await self.wait_until(lambda: self.last_tick() >= n, 'tick %d' % n, timeout)

    def write(self, data):
        self.proc.stdin.write(data)

    async def wait_exit(self, timeout=30):
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            raise AssertionError('keel did not exit; console tail %r' % self.text[-300:])
        await asyncio.gather(*self.readers)
        return rc

    def kill(self):
        if getattr(self, 'proc', None) and self.proc.returncode is None:
            self.proc.kill()


async def connect(path, name='test'):
    c = QMPClient(name)
    for _ in range(100):
        try:
            await c.connect(path)
            return c
        except Exception:
            await asyncio.sleep(0.05)
    await c.connect(path)
    return c


async def disconnect(client):
    """After keel has exited the client finds the connection closed under it (as with QEMU)."""
    try:
        await client.disconnect()
    except EOFError:
        pass


async def next_event(client, name, timeout=10):
    async def get():
        while True:
            ev = await client.events.get()
            if ev['event'] == name:
                return ev
    try:
        return await asyncio.wait_for(get(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError('no %s event within %s s' % (name, timeout))


def check_timestamp(ev):
    ts = ev['timestamp']
    check(set(ts) == {'seconds', 'microseconds'}, 'timestamp members %r' % ts)
    check(abs(ts['seconds'] + ts['microseconds'] / 1e6 - time.time()) < 60, 'timestamp is now: %r' % ts)
    check(0 <= ts['microseconds'] < 1000000, 'microseconds in range')


async def expect_error(client, cls, cmd, args=None):
    try:
        await client.execute(cmd, args)
    except ExecuteError as e:
        check(e.error_class == cls, '%s %r: class %s, expected %s' % (cmd, args, e.error_class, cls))
        return
    raise AssertionError('%s %r succeeded; expected %s' % (cmd, args, cls))


async def quit_and_check(k, qmp):
    await qmp.execute('quit')
    ev = await next_event(qmp, 'SHUTDOWN')
    check(ev['data'] == {'guest': False, 'reason': 'host-qmp-quit'}, 'SHUTDOWN data %r' % ev.get('data'))
    check_timestamp(ev)
    rc = await k.wait_exit()
    check(rc == 0, 'exit status %d after quit' % rc)
    await disconnect(qmp)


# ---- scenarios ----

async def queries():
    sock = os.path.join(TMP, 'q.sock')
    k = await Keel().start(TICKER, '-nographic', '-no-reboot', '-smp', '2', '-name', 'qmp-test',
                           '-qmp', 'unix:%s,server=on,wait=off' % sock)
    await k.wait_tick(1)
    qmp = await connect(sock)
    g = qmp.greeting._raw['QMP']  # the client has already validated it against its Greeting model
    check(set(g['version']['qemu']) == {'major', 'minor', 'micro'}, 'greeting version %r' % g)
    check(isinstance(g['version']['package'], str), 'greeting package')
    check(g['capabilities'] == [], 'capabilities %r (Keel implements no oob)' % g['capabilities'])
    check(await qmp.execute('query-version') == g['version'], 'query-version matches the greeting')
    check(await qmp.execute('query-status') == {'status': 'running', 'singlestep': False, 'running': True},
          'query-status')
    check(await qmp.execute('query-name') == {'name': 'qmp-test'}, 'query-name')
    check(await qmp.execute('query-kvm') == {'enabled': True, 'present': True}, 'query-kvm')
    cpus = await qmp.execute('query-cpus-fast')
    check(len(cpus) == 2, 'two cpus: %r' % cpus)
    for i, c in enumerate(cpus):
        check(set(c) == {'cpu-index', 'qom-path', 'thread-id', 'props', 'target'}, 'cpu members %r' % c)
        check(c['cpu-index'] == i and c['target'] == 'x86_64', 'cpu %r' % c)
        check(set(c['props']) >= {'core-id', 'socket-id', 'thread-id'}, 'props %r' % c['props'])
        check(os.path.exists('/proc/%d/task/%d' % (k.proc.pid, c['thread-id'])), 'thread-id %d is a keel thread' % c['thread-id'])
    machines = await qmp.execute('query-machines')
    check(any(m.get('is-default') for m in machines), 'a default machine')
    for m in machines:
        check({'name', 'cpu-max', 'hotpluggable-cpus', 'deprecated'} <= set(m), 'machine %r' % m)
    for cmd in ['query-block', 'query-blockstats', 'query-pci', 'query-iothreads']:
        check(await qmp.execute(cmd) == [], cmd)
    chardevs = await qmp.execute('query-chardev')
    labels = {c['label'] for c in chardevs}
    check({'compat_monitor0', 'serial0'} <= labels, 'chardev labels %r' % labels)
    for c in chardevs:
        check(set(c) == {'label', 'filename', 'frontend-open'}, 'chardev %r' % c)
    check(await qmp.execute('query-memory-size-summary') == {'base-memory': 64 << 20, 'plugged-memory': 0},
          'query-memory-size-summary')
    names = {c['name'] for c in await qmp.execute('query-commands')}
    need = {'qmp_capabilities', 'query-version', 'query-commands', 'query-status', 'query-name', 'query-kvm',
            'query-cpus-fast', 'query-machines', 'query-block', 'query-blockstats', 'query-chardev', 'query-pci',
            'query-iothreads', 'query-memory-size-summary', 'stop', 'cont', 'system_reset', 'system_powerdown',
            'quit', 'human-monitor-command'}
    check(need <= names, 'missing commands %r' % (need - names))
    hmp = lambda line: qmp.execute('human-monitor-command', {'command-line': line})
    check(await hmp('info status') == 'VM status: running\r\n', 'info status')
    info_cpus = await hmp('info cpus')
    check('* CPU #0: thread_id=%d' % cpus[0]['thread-id'] in info_cpus and 'CPU #1' in info_cpus, info_cpus)
    check(await hmp('info block') == '', 'info block')
    check('dev: isa-serial' in await hmp('info qtree'), 'info qtree')
    check('unknown command' in await hmp('frobnicate'), 'unknown HMP command')
    await quit_and_check(k, qmp)


async def stop_cont():
    sock = os.path.join(TMP, 'q.sock')
    k = await Keel().start(TICKER, '-nographic', '-no-reboot', '-qmp', 'unix:%s,server=on,wait=off' % sock)
    await k.wait_tick(3)
    qmp = await connect(sock)
    check(await qmp.execute('stop') == {}, 'stop returns {}')
    check_timestamp(await next_event(qmp, 'STOP'))
    st = await qmp.execute('query-status')
    check(st['status'] == 'paused' and st['running'] is False, 'paused: %r' % st)
    check(await qmp.execute('human-monitor-command', {'command-line': 'info status'}) == 'VM status: paused\r\n',
          'info status while paused')
    n0 = k.last_tick()
    await asyncio.sleep(1.5)  # fifteen ticks' worth
    n1 = k.last_tick()
    check(n1 <= n0 + 1, 'the guest kept printing while stopped: tick %d -> %d' % (n0, n1))
    await qmp.execute('stop')  # already stopped: no second STOP
    await qmp.execute('cont')
    check_timestamp(await next_event(qmp, 'RESUME'))
    check((await qmp.execute('query-status'))['running'] is True, 'running after cont')
    await k.wait_tick(n1 + 3, timeout=10)
    await qmp.execute('cont')  # already running: harmless
    check(all(b == a + 1 for a, b in zip(k.ticks(), k.ticks()[1:])), 'ticks are consecutive across the pause')
    await quit_and_check(k, qmp)


async def powerdown():
    sock = os.path.join(TMP, 'q.sock')
    k = await Keel().start(PWRBTN, '-nographic', '-qmp', 'unix:%s,server=on,wait=off' % sock)
    await k.wait_for('pwrbtn: ready')
    qmp = await connect(sock)
    await qmp.execute('system_powerdown')
    check_timestamp(await next_event(qmp, 'POWERDOWN'))
    ev = await next_event(qmp, 'SHUTDOWN')
    check(ev['data'] == {'guest': True, 'reason': 'guest-shutdown'}, 'SHUTDOWN data %r' % ev.get('data'))
    rc = await k.wait_exit()
    check(rc == 0, 'clean ACPI power-off ends keel with 0, got %d; console %r' % (rc, k.text[-300:]))
    check('pwrbtn: power button pressed' in k.text and 'pwrbtn: entering S5' in k.text, 'guest log %r' % k.text)
    check('S5 failed' not in k.text, 'S5 failed')
    await disconnect(qmp)


async def reset():
    sock = os.path.join(TMP, 'q.sock')
    k = await Keel().start(TICKER, '-nographic', '-qmp', 'unix:%s,server=on,wait=off' % sock)
    await k.wait_tick(2)
    qmp = await connect(sock)
    await qmp.execute('system_reset')
    ev = await next_event(qmp, 'RESET')
    check(ev['data'] == {'guest': False, 'reason': 'host-qmp-system-reset'}, 'RESET data %r' % ev.get('data'))
    await k.wait_until(lambda: k.text.count('ticker: start') == 2, 'the guest booting again')
    check((await qmp.execute('query-status'))['status'] == 'running', 'same connection after reset')
    # A reset while stopped stays stopped until cont.
    await k.wait_until(lambda: 'tick 2\n' in k.text[k.text.rfind('ticker: start'):], 'ticks after the reset')
    await qmp.execute('stop')
    await next_event(qmp, 'STOP')
    await qmp.execute('system_reset')
    await next_event(qmp, 'RESET')
    check((await qmp.execute('query-status'))['status'] == 'paused', 'a reset keeps a stopped machine stopped')
    await asyncio.sleep(0.8)
    check(k.text.count('ticker: start') == 2, 'the guest ran while stopped after reset')
    await qmp.execute('cont')
    await next_event(qmp, 'RESUME')
    await k.wait_until(lambda: k.text.count('ticker: start') == 3, 'boot after cont')
    await quit_and_check(k, qmp)


async def errors():
    sock = os.path.join(TMP, 'q.sock')
    k = await Keel().start(TICKER, '-nographic', '-no-reboot', '-qmp', 'unix:%s,server=on,wait=off' % sock)
    await k.wait_tick(1)
    qmp = await connect(sock)
    await expect_error(qmp, 'CommandNotFound', 'no-such-command')
    await expect_error(qmp, 'GenericError', 'human-monitor-command', {'command-line': 5})
    await expect_error(qmp, 'GenericError', 'human-monitor-command', {})
    await expect_error(qmp, 'GenericError', 'query-status', {'bogus': True})
    await expect_error(qmp, 'DeviceNotFound', 'device_del', {'id': 'nothing'})

    # Raw clients: malformed JSON, nesting and size bombs, and disconnects mid-message.
    r, w = await asyncio.open_unix_connection(sock, limit=1 << 26)
    greeting = json.loads(await r.readline())
    check('QMP' in greeting, 'raw greeting')
    async def raw(data):
        w.write(data)
        await w.drain()
        return json.loads(await asyncio.wait_for(r.readline(), 20))
    check(await raw(b'{"execute": "query-status"}')  == {'error': {'class': 'CommandNotFound',
          'desc': "Expecting capabilities negotiation with 'qmp_capabilities'"}}, 'before negotiation')
    check(await raw(b'{"execute": "qmp_capabilities", "id": 1}') == {'return': {}, 'id': 1}, 'negotiate')
    for bad, what in [(b'garbage\n', 'invalid keyword'), (b'[1, 2]', 'must be a JSON object'),
                      (b'{"execute": 5}', "must be a string"), (b'\xff\xfe\n', 'JSON parse error'),
                      (b'[' * 5000 + b']' * 5000, 'nesting'), (b'"' + b'x' * (20 << 20) + b'"', 'size limit')]:
        reply = await raw(bad)
        check(reply.get('error', {}).get('class') == 'GenericError' and what in reply['error']['desc'],
              'reply to %r: %r' % (bad[:20], reply))
    check((await raw(b'{"execute": "query-status", "id": "x"}'))['return']['running'] is True, 'still serving')
    for junk in [b'{"execute": "qmp_capa', b'{"a": "' + b'y' * (3 << 20)]:
        r2, w2 = await asyncio.open_unix_connection(sock)
        await r2.readline()
        w2.write(junk)
        await w2.drain()
        w2.close()
    n = k.last_tick()
    await k.wait_tick(n + 3, timeout=10)
    check((await qmp.execute('query-status'))['status'] == 'running', 'the VM kept running')
    w.close()
    await quit_and_check(k, qmp)


async def multi():
    sock = os.path.join(TMP, 'q.sock')
    hmp_sock = os.path.join(TMP, 'h.sock')
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    k = await Keel().start(TICKER, '-nographic', '-no-reboot', '-qmp', 'unix:%s,server=on,wait=off' % sock,
                           '-chardev', 'socket,id=qmp1,host=127.0.0.1,port=%d,server=on,wait=off' % port,
                           '-mon', 'chardev=qmp1,mode=control',
                           '-chardev', 'socket,id=hmp0,path=%s,server=on,wait=off' % hmp_sock,
                           '-mon', 'chardev=hmp0,mode=readline')
    await k.wait_tick(1)
    a, b = await connect(sock, 'a'), await connect(sock, 'b')
    c = QMPClient('c')
    await c.connect(('127.0.0.1', port))
    raw_r, raw_w = await asyncio.open_unix_connection(sock)
    await raw_r.readline()  # greeting; this client never negotiates
    await a.execute('stop')
    for cl in (a, b, c):
        await next_event(cl, 'STOP')
    hr, hw = await asyncio.open_unix_connection(hmp_sock)
    async def hmp_until(cmd, expect):
        hw.write(cmd)
        await hw.drain()
        buf = b''
        while expect not in buf:
            buf += await asyncio.wait_for(hr.read(4096), 10)
        return buf
    await hmp_until(b'', b'(qemu) ')
    await hmp_until(b'info status\r\n', b'VM status: paused')
    await hmp_until(b'cont\r\n', b'(qemu) ')
    for cl in (a, b, c):
        await next_event(cl, 'RESUME')
    check((await c.execute('query-status'))['running'] is True, 'tcp client sees running')
    try:
        extra = await asyncio.wait_for(raw_r.readline(), 0.5)
    except asyncio.TimeoutError:
        extra = b''
    check(extra == b'', 'an unnegotiated client got an event: %r' % extra)
    await b.disconnect()
    await quit_and_check(k, a)
    await disconnect(c)


async def hmp_stdio():
    k = await Keel().start(TICKER, '-display', 'none', '-serial', 'null', '-no-reboot', '-monitor', 'stdio')
    await k.wait_for('(qemu) ')
    async def cmd(line, expect):
        k.write(line.encode() + b'\n')
        await k.wait_until(lambda: k.text.count(expect) >= 1, repr(expect))
    await cmd('info status', 'VM status: running')
    await cmd('stop', 'stop\n')
    await cmd('info status', 'VM status: paused')
    await cmd('info cpus', '* CPU #0: thread_id=')
    await cmd('cont', 'cont\n')
    k.write(b'info status\n')
    await k.wait_until(lambda: k.text.count('VM status: running') == 2, 'running again')
    k.write(b'quit\n')
    rc = await k.wait_exit()
    check(rc == 0, 'quit from the human monitor: status %d' % rc)


async def mux_console():
    k = await Keel().start(TICKER, '-nographic', '-no-reboot')
    await k.wait_tick(2)
    k.write(b'\x01c')
    await k.wait_for('(qemu) ')
    k.write(b'stop\r')
    await k.wait_until(lambda: k.text.count('(qemu) ') >= 2, 'prompt after stop')
    n0 = k.last_tick()
    k.write(b'info status\r')
    await k.wait_for('VM status: paused')
    await asyncio.sleep(1.0)
    check(k.last_tick() <= n0 + 1, 'ticks while stopped from Ctrl-A c')
    k.write(b'cont\r')
    await k.wait_tick(n0 + 3, timeout=10)
    k.write(b'\x01c')  # back to the console; the monitor no longer reads input
    k.write(b'info status\r')
    await asyncio.sleep(0.5)
    check(k.text.count('VM status:') == 1, 'input after Ctrl-A c went to the monitor')
    k.write(b'\x01x')
    rc = await k.wait_exit()
    check(rc == 0, 'Ctrl-A x: status %d' % rc)


async def prelaunch():
    sock = os.path.join(TMP, 'q.sock')
    k = await Keel().start(TICKER, '-nographic', '-no-reboot', '-S', '-qmp', 'unix:%s,server=on,wait=off' % sock)
    qmp = await connect(sock)
    check((await qmp.execute('query-status'))['status'] == 'prelaunch', '-S starts in prelaunch')
    await asyncio.sleep(0.8)
    check('ticker: start' not in k.text, 'the guest ran before cont')
    await qmp.execute('cont')
    await next_event(qmp, 'RESUME')
    await k.wait_tick(1)
    await quit_and_check(k, qmp)


SCENARIOS = {'queries': queries, 'stop-cont': stop_cont, 'powerdown': powerdown, 'reset': reset,
             'errors': errors, 'multi': multi, 'hmp-stdio': hmp_stdio, 'mux-console': mux_console,
             'prelaunch': prelaunch}


async def main():
    try:
        await asyncio.wait_for(SCENARIOS[SCENARIO](), 90)
    except asyncio.TimeoutError:
        raise AssertionError('scenario timed out')
    finally:
        for k in RUNNING:
            k.kill()
    print('PASS', SCENARIO)


if __name__ == '__main__':
    try:
        asyncio.run(main())
    except AssertionError as e:
        sys.exit('FAIL %s: %s' % (SCENARIO, e))
