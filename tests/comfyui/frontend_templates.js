// Opens each of the pack's templates from ComfyUI's own template browser (Templates -> Extensions ->
// ComfyUI-LetsTalk) in headless Chromium at 1600x1000, waits for the example media to load, and prints
// as JSON: per template, whether its thumbnail loaded, the nodes (type, position, size), node types the
// front end does not know, and a screenshot path; then the widget values of a LetsTalk Sampler added
// by hand (LiteGraph.createNode, what the node search adds), and what the node search box lists for
// "talking head", "lip sync" and "talking avatar".
// usage: node frontend_templates.js CHROMIUM_PATH COMFYUI_URL SCREENSHOT_DIR TEMPLATE_NAME [...]
const { chromium } = require('playwright-core');

(async () => {
  const [executablePath, url, shots, ...names] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    const errors = [];
    page.on('pageerror', (error) => errors.push(String(error)));
    await page.goto(url, { waitUntil: 'load', timeout: 120000 });
    await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 120000 });
    const templates = {};
    for (const [index, name] of names.entries()) {
      await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'));
      await page.getByText('ComfyUI-LetsTalk', { exact: true }).first().click({ timeout: 30000 });
      const card = page.getByText(name, { exact: true }).first();
      await card.waitFor({ timeout: 30000 });
      // the card's picture (the front end fetches it and shows it as a blob): the nearest image above the title
      const thumbnail = await (await page.waitForFunction((title) => {
        const label = [...document.querySelectorAll('*')].find((el) => el.children.length === 0
                                                                    && el.textContent.trim() === title);
        for (let el = label; el; el = el.parentElement) {
          const images = el.querySelectorAll('img');
          if (images.length > 1) return false;  // reached the grid: its own picture is not there yet, ask again
          if (images.length === 1) {
            const image = images[0];
            if (!image.complete) return false;  // still loading: ask again
            // a fetched thumbnail is shown as a blob; a missing one as the front end's default-template.png
            return { src: image.currentSrc, width: image.naturalWidth };
          }
        }
        return false;
      }, name, { timeout: 30000 })).jsonValue();
      await card.click();
      await page.waitForFunction((count) => window.app.graph._nodes.length > 0, null, { timeout: 30000 });
      await page.waitForTimeout(5000);  // the picture and the audio player load and the nodes grow
      const state = await page.evaluate(() => ({
        nodes: window.app.graph._nodes.map((n) => ({ id: n.id, type: n.type, pos: [...n.pos], size: [...n.size] })),
        unknown: window.app.graph._nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type),
        scale: window.app.canvas.ds.scale,
      }));
      const shot = `${shots}/template_${index}.png`;
      await page.screenshot({ path: shot });
      templates[name] = { thumbnail, ...state, screenshot: shot };
    }
    const sampler = await page.evaluate(() => {
      const node = LiteGraph.createNode('LetsTalkSampler');
      return Object.fromEntries(node.widgets.map((w) => [w.name, w.value]));
    });
    // the node search box, as a user opens it, for words a user might type
    const search = {};
    for (const query of ['talking head', 'lip sync', 'talking avatar']) {
      await page.evaluate(() => window.app.extensionManager.command.execute('Workspace.SearchBox.Toggle'));
      const input = page.locator('.comfy-vue-node-search-container input').first();
      await input.waitFor({ timeout: 15000 });
      await input.fill(query);
      await page.waitForTimeout(1500);
      search[query] = await page.evaluate(() => [...document.querySelectorAll('li[role=option]')]
        .map((item) => item.textContent.trim()).filter((text) => text));
      await page.keyboard.press('Escape');
      await page.waitForTimeout(500);
    }
    console.log(JSON.stringify({ errors, templates, sampler, search }));
  } finally {
    await browser.close();
  }
})().catch((error) => { console.error(error); process.exit(1); });
