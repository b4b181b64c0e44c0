"""GUI entry points: ``run_gui`` (the window, ``--screenshot``) and ``map_main``.

``run_gui`` sets up the QApplication, logging and the one excepthook, then
opens the images as tabs of one :class:`~qcow2view.ui.mainwindow.MainWindow`.

With ``QCOW2VIEW_TIMING=1`` in the environment the launch prints milestones to
stderr, in seconds since the process started (Linux: /proc/self/stat, so the
interpreter's own start-up counts): QApplication made, window shown, header and
table tree first painted with content, maps ready, screenshot saved.
tests/benchmarks/bench_gui.py reads them from a real ``--screenshot`` run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

APP_NAME = "qcow2view"
SCREENSHOT_TIMEOUT = 120.0      # seconds to wait for maps before giving up
TIMING = os.environ.get("QCOW2VIEW_TIMING") == "1"
_IMPORTED = time.perf_counter()


def process_age() -> float:
    """Seconds since this process started (since this module's import off Linux)."""
    try:
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


def mark(label: str) -> None:
    """One launch milestone on stderr, when QCOW2VIEW_TIMING=1."""
    if TIMING:
        print(f"qcow2view timing: {label} {process_age():.3f}", file=sys.stderr, flush=True)


def _watch_first_paint(tab) -> None:
    """Mark when the header panel and the table tree have both painted with content."""
    from PySide6.QtCore import QEvent, QObject

    views = {"header": (tab.header_panel.view, tab.header_model),
             "tree": (tab.table_panel.view, tab.tree_model)}
    painted: set[str] = set()

    class FirstPaint(QObject):
        def eventFilter(self, obj, ev):
            if ev.type() == QEvent.Paint:
                for name, (view, model) in views.items():
                    if obj is view.viewport() and model.rowCount() > 0:
                        painted.add(name)
                if len(painted) == len(views):
                    for view, _ in views.values():
                        view.viewport().removeEventFilter(self)
                    # after the paint: the milestone is the painted frame
                    from PySide6.QtCore import QTimer
                    QTimer.singleShot(0, lambda: mark("header+tree painted"))
            return False

    spy = FirstPaint(tab)
    for view, _ in views.values():
        view.viewport().installEventFilter(spy)


def _headless_default() -> None:
    if not os.environ.get("QT_QPA_PLATFORM"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"


#: Qt's offscreen platform says this for every top-level window it shows; it is
#: no fault of ours and buried real warnings in --screenshot runs.
NOISE = "This plugin does not support propagateSizeHints()"
_filter_installed = False


def install_message_filter() -> None:
    """Drop exactly :data:`NOISE` from Qt's messages; pass everything else on to the
    handler that was there before (or format it as Qt's default one does)."""
    global _filter_installed
    if _filter_installed:
        return
    from PySide6.QtCore import qFormatLogMessage, qInstallMessageHandler
    previous = None

    def handler(mode, context, message):
        if message == NOISE:
            return
        if previous is not None:
            previous(mode, context, message)
        else:
            print(qFormatLogMessage(mode, context, message), file=sys.stderr, flush=True)

    previous = qInstallMessageHandler(handler)
    _filter_installed = True


def make_app():
    """The QApplication (created once), named so QSettings and the desktop agree."""
    from PySide6.QtWidgets import QApplication
    install_message_filter()
    app = QApplication.instance()
    if app is None:
        app = QApplication(sys.argv[:1])
    app.setOrganizationName(APP_NAME)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName("qcow2view")
    try:
        from .desktop import setup_application
        setup_application(app)      # icon, desktop file name (the packaging's identity)
    except (ImportError, OSError):
        app.setDesktopFileName(APP_NAME)
    return app


def run_gui(ns) -> int:
    if getattr(ns, "screenshot", None):
        _headless_default()
    app = make_app()
    mark("qapplication")
    from .ui import dialogs
    dialogs.setup_logging()
    hook = dialogs.ExceptHook(app)
    hook.install()
    try:
        if getattr(ns, "screenshot", None):
            return _screenshot(ns, app)
        win, why = open_window(app, ns)
        if why is not None:
            print(f"qcow2view: {why}", file=sys.stderr)
            win.close_all()
            return 2
        with quit_on_sigint(app, win):
            return app.exec()
    finally:
        hook.uninstall()


@contextlib.contextmanager
def quit_on_sigint(app, win):
    """Ctrl+C in the terminal closes the window as File > Quit does (asking about unsaved
    edits).  Python runs signal handlers only when it gets control, which an idle Qt
    event loop never gives it: a timer wakes the interpreter a few times a second."""
    from PySide6.QtCore import QTimer
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, lambda *_: QTimer.singleShot(0, win.close))
    timer = QTimer(app)
    timer.timeout.connect(lambda: None)
    timer.start(200)
    try:
        yield
    finally:
        timer.stop()
        timer.deleteLater()
        signal.signal(signal.SIGINT, old)


def open_window(app, ns):
    """The main window as the command line asks, shown: the images (or the demo) open,
    ``--goto`` and ``--view`` applied.  Returns (window, None), or (window, the reason)
    when the options cannot be followed."""
    from .ui.mainwindow import MainWindow
    from .ui.settings import recent_files
    win = MainWindow(edit=bool(getattr(ns, "edit", False)))
    open_initial(win, ns, first_run=not recent_files())
    if _wants_view(ns) and win.current_tab() is None:
        return win, "--view and --goto need an image (or --demo)"
    _time_tabs(win)
    win.show()
    mark("window shown")
    app.processEvents()         # laid out, so the hex view and the tree scroll to --goto
    return win, show_initial_view(win, ns)


def _time_tabs(win) -> None:
    if not TIMING or not win.tabs_list():
        return
    tab = win.tabs_list()[0]
    _watch_first_paint(tab)
    tab.document.mapsReady.connect(lambda: mark("maps ready"))


def open_initial(win, ns, *, first_run: bool) -> None:
    """The images named on the command line; the demo image when asked, or on a first
    run with nothing to open (so a newcomer has something real to look at)."""
    for p in ns.images:
        win.open_path(p)
    if getattr(ns, "demo", False) or (not ns.images and first_run):
        win.open_demo()


def _wants_view(ns) -> bool:
    return bool(getattr(ns, "view", None) or getattr(ns, "goto", None)
                or getattr(ns, "goto_file", None))


def show_initial_view(win, ns) -> str | None:
    """``--goto`` then ``--view`` on the current tab; the reason when ``--goto`` is not
    an offset of the disk (None when all is well)."""
    tab = win.current_tab()
    if tab is None or not _wants_view(ns):
        return None
    if ns.goto:
        from .ui.goto import parse_goto
        size = tab.hex_guest.doc.size
        try:
            offset = parse_goto(ns.goto, size=size)
        except ValueError as e:
            return f"--goto {ns.goto}: {e}"
        tab.go_to_guest(offset)
    goto_file = getattr(ns, "goto_file", None)
    if goto_file:
        from .ui.filespanel import go_to_file_now
        why = go_to_file_now(tab, goto_file)
        if why is not None:
            return f"--goto-file {goto_file}: {why}"
    view = ns.view or "hex"
    if view == "files":
        from .ui.filespanel import read_files_now
        read_files_now(tab)
    tab.show_pane(view)
    if (ns.goto or goto_file) and view == "hex":
        tab.pane(view).view.setFocus()      # the caret drawn solid, the keys go there
    return None


def wait_until_ready(app, tabs, timeout: float | None = None, stop=lambda: False) -> bool:
    """Run the event loop until every tab's maps are in (or failed); False on timeout or
    as soon as ``stop()`` says an error was reported."""
    deadline = time.monotonic() + (SCREENSHOT_TIMEOUT if timeout is None else timeout)
    while time.monotonic() < deadline:
        app.processEvents()
        if stop():
            return False
        if all(t.ready for t in tabs):
            return True
        time.sleep(0.01)
    return False


def _screenshot(ns, app) -> int:
    from .ui import dialogs
    from .ui.mainwindow import MainWindow
    failures: list[str] = []

    def to_stderr(title: str, text: str, details: str | None) -> None:
        failures.append(text)
        print(f"qcow2view: {text}", file=sys.stderr)

    dialogs.set_hook(to_stderr)
    win = MainWindow(remember=False, edit=bool(getattr(ns, "edit", False)))
    try:
        win.resize(1600, 960)
        paths = list(ns.images)
        if getattr(ns, "demo", False):
            tab = win.open_demo()
            if tab is None:
                return 1
        for p in paths:
            if win.open_path(p) is None:
                return 1
        if not win.tabs_list() and not paths:
            print("qcow2view: --screenshot needs an image (or --demo)", file=sys.stderr)
            return 2
        _time_tabs(win)
        win.show()
        mark("window shown")
        if not wait_until_ready(app, win.tabs_list(), stop=lambda: bool(failures)):
            if not failures:
                print("qcow2view: timed out waiting for the maps", file=sys.stderr)
            return 1
        why = show_initial_view(win, ns)
        if why is not None:
            print(f"qcow2view: {why}", file=sys.stderr)
            return 2
        for t in win.tabs_list():
            t.heatmap.redraw()
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)
        if failures:
            return 1
        out = os.fspath(ns.screenshot)
        if not save_png(win.grab(), out):
            print(f"qcow2view: cannot write {out}", file=sys.stderr)
            return 1
        mark("screenshot saved")
        return 0
    finally:
        win.close_all()
        win.deleteLater()
        dialogs.set_hook(None)


def save_png(image, path: str) -> bool:
    """Save a QImage/QPixmap as PNG under exactly ``path``: Qt would turn a name that is
    not UTF-8 into U+FFFD, so the bytes are written by Python."""
    from PySide6.QtCore import QBuffer, QIODevice
    buf = QBuffer()
    buf.open(QIODevice.WriteOnly)
    if not image.save(buf, "PNG"):
        return False
    try:
        with open(path, "wb") as f:
            f.write(buf.data().data())
    except OSError:
        return False
    return True


MAP_WIDTH = (16, 4096)     # --width bounds: the PNG takes about 4 * width^2 bytes


def map_main(ns) -> int:
    """``qcow2view map IMAGE --png OUT.png``: the heatmap alone, rendered offscreen."""
    lo, hi = MAP_WIDTH
    if not lo <= ns.width <= hi:
        print(f"qcow2view map: --width must be between {lo} and {hi} pixels", file=sys.stderr)
        return 2
    _headless_default()
    from PySide6.QtGui import QGuiApplication
    install_message_filter()
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 - fonts
    from .engine import Qcow2Error, open_image
    try:
        # open while drawing: the host map reads refcounts from the file when asked
        with open_image(ns.image, ignore_backing_errors=True) as img:
            hm = img.host_map() if ns.mode != "guest" else None
            gm = img.guest_map() if ns.mode == "guest" else None
            return _render_map(ns, hm, gm)
    except Qcow2Error as e:
        print(f"qcow2view map: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"qcow2view map: {ns.image}: {e.strerror}", file=sys.stderr)
        return 1


def _render_map(ns, hm, gm) -> int:
    from .model.allocation import AllocationModel, auto_width
    model = AllocationModel()
    model.set_maps(hm, gm)
    n = model.count(ns.mode)
    cells = min(auto_width(n), ns.width)
    scale = max(1, ns.width // cells)
    pic = model.picture(ns.mode, width=cells, max_rows=max(16, (ns.width * 2) // scale))
    image = render_with_legend(model, pic, scale, ns.width)
    if not save_png(image, os.fspath(ns.png)):
        print(f"qcow2view map: cannot write {ns.png}", file=sys.stderr)
        return 1
    tail = getattr(hm, "free_tail", 0) if ns.mode != "guest" else 0
    more = (f"; then {tail:,} unused clusters to the end of the file, not drawn"
            if tail else "")
    print(f"{ns.png}: {pic.count:,} clusters, {pic.width} x {pic.rows} cells, "
          f"{pic.bin} cluster(s) per cell{more}")
    return 0


def render_with_legend(model, pic, scale: int, width: int | None = None):
    """The picture scaled by ``scale`` (then to ``width`` pixels) with a legend underneath."""
    from PySide6.QtCore import QRect, Qt
    from PySide6.QtGui import QColor, QFont, QImage, QPainter
    from .model.allocation import MODE_TITLES
    body = model.to_qimage(pic, scale)
    if width is not None and body.width() != width:
        h = max(1, round(body.height() * width / body.width()))
        body = body.scaled(width, h, Qt.IgnoreAspectRatio, Qt.FastTransformation)
    legend = model.legend(pic.mode)
    w = body.width()
    line = 20
    cols = max(1, w // 180)
    rows = -(-len(legend) // cols)
    out = QImage(w, body.height() + 34 + rows * line + 8, QImage.Format_ARGB32)
    out.fill(QColor("white"))
    p = QPainter(out)
    p.drawImage(0, 0, body)
    f = QFont()
    f.setPixelSize(12)
    p.setFont(f)
    y = body.height() + 8
    p.setPen(QColor("#263238"))
    p.drawText(QRect(4, y, w - 8, line), Qt.AlignLeft | Qt.AlignVCenter,
               f"{MODE_TITLES[pic.mode]}: {pic.count:,} clusters, "
               f"{pic.bin:,} per cell")
    y += line + 4
    for i, (name, col, count) in enumerate(legend):
        r, c = divmod(i, cols)
        x0, y0 = 4 + c * (w // cols), y + r * line
        p.fillRect(x0, y0 + 3, 12, 12, col)
        p.setPen(QColor("#607d8b"))
        p.drawRect(x0, y0 + 3, 12, 12)
        p.setPen(QColor("#263238"))
        p.drawText(QRect(x0 + 18, y0, w // cols - 22, line), Qt.AlignLeft | Qt.AlignVCenter,
                   f"{name} ({count:,})")
    p.end()
    return out
