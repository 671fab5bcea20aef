// What the front-end tests share: headless Chromium on ComfyUI's page, and opening one of the pack's
// templates the way a user does (Templates -> Extensions -> ComfyUI-LetsTalk -> the card).
const { chromium } = require('playwright-core');

async function openComfyUI(executablePath, url, viewport) {
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport });
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));
  await page.goto(url, { waitUntil: 'load', timeout: 120000 });
  await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 120000 });
  return { browser, page, errors };
}

// Opens the template browser at the pack's templates and waits for the card titled `name`; returns it.
async function findTemplateCard(page, name) {
  await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'));
  await page.getByText('ComfyUI-LetsTalk', { exact: true }).first().click({ timeout: 30000 });
  const card = page.getByText(name, { exact: true }).first();
  await card.waitFor({ timeout: 30000 });
  return card;
}

// Clicks the card and waits until its graph is on the canvas and its media had time to load.
async function openTemplate(page, card) {
  await card.click();
  await page.waitForFunction(() => window.app.graph._nodes.length > 0, null, { timeout: 30000 });
  await page.waitForTimeout(5000);  // the picture and the audio player load and the nodes grow
}

module.exports = { openComfyUI, findTemplateCard, openTemplate };
