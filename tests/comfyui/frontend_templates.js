// Opens each of the pack's templates from ComfyUI's own template browser (Templates -> Extensions ->
// ComfyUI-LetsTalk) in headless Chromium at 1400x900, waits for the example media to load, and prints
// as JSON: per template, whether its thumbnail loaded, the nodes (type, position, size), node types the
// front end does not know, and a screenshot path; then the widget values of a LetsTalk Sampler added
// by hand (LiteGraph.createNode, what the node search adds), and what the node search box lists for
// words a user might type ("talking head", "lipsync", "speech", "talking video"...).
// usage: node frontend_templates.js CHROMIUM_PATH COMFYUI_URL SCREENSHOT_DIR TEMPLATE_NAME [...]
const { openComfyUI, findTemplateCard, openTemplate } = require('./frontend_browser.js');

(async () => {
  const [executablePath, url, shots, ...names] = process.argv.slice(2);
  const { browser, page, errors } = await openComfyUI(executablePath, url, { width: 1400, height: 900 });
  try {
    const templates = {};
    for (const [index, name] of names.entries()) {
      const card = await findTemplateCard(page, name);
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
            return { src: image.currentSrc, width: image.naturalWidth, card: el.innerText };
          }
        }
        return false;
      }, name, { timeout: 30000 })).jsonValue();
      await openTemplate(page, card);
      const state = await page.evaluate(() => ({
        nodes: window.app.graph._nodes.map((n) => ({ id: n.id, type: n.type, pos: [...n.pos], size: [...n.size] })),
        unknown: window.app.graph._nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type),
        scale: window.app.canvas.ds.scale,
        offset: [...window.app.canvas.ds.offset],
        // the part of the canvas no bar covers: right of the side bar, below the top bars and the floating
        // workflow and run panels; and the minimap's box in its corner
        view: (() => {
          const box = (selector) => { const el = document.querySelector(selector); return el && el.getBoundingClientRect(); };
          const canvas = document.querySelector('#graph-canvas').getBoundingClientRect();
          const side = box('.side-tool-bar-container');
          const minimap = box('.litegraph-minimap') || box('.minimap-main-container');
          const tops = [...document.querySelectorAll('.actionbar, .workflow-tabs-container, .p-toolbar, .comfyui-menu')]
            .map((el) => el.getBoundingClientRect()).filter((r) => r.width > 0 && r.top < 200).map((r) => r.bottom);
          return { left: side ? side.right : canvas.left, top: Math.max(canvas.top, ...tops), right: canvas.right,
                   bottom: canvas.bottom, minimap: minimap && minimap.width > 0
                     ? [minimap.left, minimap.top, minimap.right, minimap.bottom] : null };
        })(),
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
    for (const query of ['talking head', 'lipsync', 'lip sync', 'speech', 'talking video', 'talking avatar']) {
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
