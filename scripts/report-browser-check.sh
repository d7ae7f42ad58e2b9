#!/usr/bin/env bash
# Opens a `transact report` folder in real headless Chromium and checks that it renders:
# every figure of report.html (inline SVG) is drawn and visible, the page logs no errors, and
# every PNG that report.md links loads as an image (no broken images). Writes a screenshot of
# the HTML page. Exit status 1 when a check fails.
#   scripts/report-browser-check.sh REPORT_DIR [SCREENSHOT.png]
# Installs Debian's chromium (apt-get) if missing and playwright-core from npm into a throw-away
# folder (REPORT_CHECK_NODE, default /tmp/transact-report-check); nothing else is installed.
set -euo pipefail
DIR=$(cd "${1:?usage: $0 REPORT_DIR [SCREENSHOT.png]}" && pwd)
SHOT=${2:-$DIR/../report-screenshot.png}
NODE_DIR=${REPORT_CHECK_NODE:-/tmp/transact-report-check}
[[ -f $DIR/report.html && -f $DIR/report.md ]] || { echo "$DIR: no report.html and report.md (write them with transact report)" >&2; exit 2; }
if ! command -v chromium >/dev/null 2>&1; then
    echo "installing Debian's chromium (apt-get)" >&2
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
if [[ ! -d $NODE_DIR/node_modules/playwright-core ]]; then
    echo "installing playwright-core into $NODE_DIR" >&2
    mkdir -p "$NODE_DIR" && (cd "$NODE_DIR" && npm init -y >/dev/null && npm install --silent playwright-core@1 >/dev/null)
fi
# A page of <img> tags for the PNGs report.md links, to check them as a browser loads them.
IMGS="$DIR/.images-check.html"
trap 'rm -f "$IMGS"' EXIT
{
    echo '<!DOCTYPE html><html><body>'
    grep -o '](plots/[^)]*\.png)' "$DIR/report.md" | sed 's/^](\(.*\))$/<img src="\1">/'
    echo '</body></html>'
} > "$IMGS"
NODE_PATH="$NODE_DIR/node_modules" node - "$DIR/report.html" "$IMGS" "$SHOT" <<'JS'
const { chromium } = require('playwright-core');
const [html, imgs, shot] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu',
    '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on('console', m => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', e => errors.push(String(e)));
  await page.goto('file://' + html, { waitUntil: 'load' });
  const figures = await page.$$eval('figure', fs => fs.map(f => {
    const svg = f.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : { width: 0, height: 0 };
    return { id: f.id, width: Math.round(box.width), height: Math.round(box.height), shapes: svg ? svg.querySelectorAll('rect,circle,polyline,path,line,polygon').length : 0,
             texts: svg ? svg.querySelectorAll('text').length : 0 };
  }));
  const rows = await page.$$eval('table tr', r => r.length - 1);
  const broken = await page.$$eval('img', is => is.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src));
  await page.screenshot({ path: shot, fullPage: true });
  await page.goto('file://' + imgs, { waitUntil: 'load' });
  const pngs = await page.$$eval('img', is => is.map(i => ({ src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, width: i.naturalWidth })));
  await browser.close();
  const bad = figures.filter(f => f.width < 200 || f.height < 100 || f.shapes < 5 || f.texts < 3);
  const badPng = pngs.filter(p => !p.ok);
  for (const f of figures) console.log(`figure ${f.id}: ${f.width}×${f.height} px, ${f.shapes} shapes, ${f.texts} texts`);
  for (const p of pngs) console.log(`png ${p.src}: ${p.ok ? p.width + ' px wide' : 'BROKEN'}`);
  console.log(`table rows: ${rows}; console errors: ${errors.length}; screenshot: ${shot}`);
  const ok = figures.length > 0 && bad.length === 0 && broken.length === 0 && badPng.length === 0 && pngs.length === figures.length && errors.length === 0 && rows > 0;
  if (!ok) { console.log('FAILED', JSON.stringify({ bad, broken, badPng, errors })); process.exit(1); }
  console.log('report renders: every figure drawn, no broken images, no errors');
})().catch(e => { console.error(e); process.exit(1); });
JS
