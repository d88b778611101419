"""Pictures drawn with PIL and numpy alone (no plotting library): heat maps in a jet-like colour map laid over an
image, a row of captioned panels under a title, line charts with axes, ticks and a legend, and PNG files written
atomically. tools/visualize.py and tools/plot_metrics.py draw with it.
"""
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A jet-like colour map: RGB stops at positions in [0, 1], interpolated linearly (dark blue, blue, cyan, yellow,
# red, dark red).
JET_STOPS = (0.0, 0.125, 0.375, 0.625, 0.875, 1.0)
JET_COLOURS = ((0, 0, 128), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (128, 0, 0))
FONT_SIZE = 14
LINE_HEIGHT = FONT_SIZE + 6  # one line of text with its spacing
MARGIN = 8
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (160, 160, 160)
SERIES_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189))


def colormap(values):
    """values in [0, 1] (any shape; clipped) -> uint8 RGB [..., 3] of the jet-like colour map."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    channels = [np.interp(values, JET_STOPS, [colour[c] for colour in JET_COLOURS]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def rescaled(heat):
    """heat (2-D) shifted and scaled to [0, 1] (min to 0, max to 1); a constant map is all 0."""
    heat = np.asarray(heat, dtype=np.float64)
    span = heat.max() - heat.min()
    return (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)


def overlay(image, heat, alpha=0.5):
    """The RGB PIL image with heat (a 2-D map over the whole image, any resolution) resized to it (bilinear),
    rescaled to [0, 1], coloured and blended in with weight alpha."""
    smooth = Image.fromarray(np.asarray(heat, dtype=np.float32), 'F').resize(image.size, Image.BILINEAR)
    colours = colormap(rescaled(np.asarray(smooth))).astype(np.float64)
    blended = (1 - alpha) * np.asarray(image, dtype=np.float64) + alpha * colours
    return Image.fromarray(np.rint(blended).astype(np.uint8), 'RGB')


def font():
    """PIL's built-in font at FONT_SIZE (a scalable one from Pillow 10.1; the fixed bitmap font before)."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:
        return ImageFont.load_default()


def fitted(draw, text, typeface, width):
    """text as typeface can draw it (the bitmap font has Latin-1 only), cut to at most width pixels with '...'."""
    if not isinstance(typeface, ImageFont.FreeTypeFont):
        text = text.encode('latin-1', 'replace').decode('latin-1')
    if draw.textlength(text, font=typeface) <= width:
        return text
    while text and draw.textlength(text + '...', font=typeface) > width:
        text = text[:-1]
    return text + '...'


def panel_row(title_lines, panels):
    """One picture: the title lines on top, then the panels side by side, each under its caption. panels:
    [(caption, PIL RGB image)], all of one size (side x side). Size: width n * (side + MARGIN) + MARGIN, height
    MARGIN + LINE_HEIGHT * (len(title_lines) + 1) + side + MARGIN."""
    side = panels[0][1].size[0]
    width = len(panels) * (side + MARGIN) + MARGIN
    top = MARGIN + LINE_HEIGHT * len(title_lines)
    picture = Image.new('RGB', (width, top + LINE_HEIGHT + side + MARGIN), WHITE)
    draw, typeface = ImageDraw.Draw(picture), font()
    for i, line in enumerate(title_lines):
        draw.text((MARGIN, MARGIN + i * LINE_HEIGHT), fitted(draw, line, typeface, width - 2 * MARGIN), fill=BLACK,
                  font=typeface)
    for i, (caption, image) in enumerate(panels):
        left = MARGIN + i * (side + MARGIN)
        draw.text((left, top), fitted(draw, caption, typeface, side), fill=BLACK, font=typeface)
        picture.paste(image, (left, top + LINE_HEIGHT))
    return picture


def save_png(image, path):
    """Write image as a PNG at path under a temporary name, then rename it into place: path holds the old file or
    the whole new one, never part of one. The temporary file is removed when writing fails."""
    tmp = os.path.join(os.path.dirname(path) or '.', f'.{os.path.basename(path)}.tmp{os.getpid()}')
    try:
        image.save(tmp, format='PNG')
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def nice_ticks(low, high, count=5):
    """About count round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step)
    return [(first + i) * step for i in range(int(math.ceil(high / step)) - first + 1)]


def tick_label(value):
    """A short label of a tick value: 0.0005 -> '5e-04', 12.0 -> '12', 0.25 -> '0.25'."""
    if value and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f'{value:.0e}'
    return f'{value:.6g}'


def line_chart(size, title, x_label, series):
    """An RGB PIL image of size (width, height): a line chart of series [(label, xs, ys)] (None values leave a
    gap; points marked) with axes, round ticks on both, the x label, the title and a legend. Series without any
    value are left out; with none at all, the chart says so."""
    width, height = size
    picture = Image.new('RGB', size, WHITE)
    draw, typeface = ImageDraw.Draw(picture), font()
    draw.text((MARGIN, MARGIN), fitted(draw, title, typeface, width - 2 * MARGIN), fill=BLACK, font=typeface)
    series = [(label, [(x, y) for x, y in zip(xs, ys) if y is not None]) for label, xs, ys in series]
    series = [(label, points) for label, points in series if points]
    if not series:
        draw.text((MARGIN, MARGIN + LINE_HEIGHT), 'no values recorded', fill=GREY, font=typeface)
        return picture
    xs = [x for _, points in series for x, _ in points]
    ys = [y for _, points in series for _, y in points]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    left = MARGIN + max(draw.textlength(tick_label(t), font=typeface) for t in y_ticks) + 6
    box = (left, MARGIN + 2 * LINE_HEIGHT, width - 2 * MARGIN, height - MARGIN - 2 * LINE_HEIGHT)
    to_pixel = _scales(box, (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1]))
    _axes(draw, typeface, box, x_ticks, y_ticks, to_pixel, x_label)
    for (label, points), colour in zip(series, SERIES_COLOURS * len(series)):
        pixels = [to_pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
    _legend(draw, typeface, box, [label for label, _ in series])
    return picture


def _scales(box, x_range, y_range):
    """(x, y) data -> (px, py) in box (left, top, right, bottom) for the data ranges (y up)."""
    left, top, right, bottom = box

    def to_pixel(x, y):
        fx = (x - x_range[0]) / ((x_range[1] - x_range[0]) or 1)
        fy = (y - y_range[0]) / ((y_range[1] - y_range[0]) or 1)
        return left + fx * (right - left), bottom - fy * (bottom - top)
    return to_pixel


def _axes(draw, typeface, box, x_ticks, y_ticks, to_pixel, x_label):
    """The frame of box, grid lines and labels at the ticks, the x label under the axis."""
    left, top, right, bottom = box
    for t in y_ticks:
        _, py = to_pixel(x_ticks[0], t)
        draw.line((left, py, right, py), fill=(230, 230, 230))
        text = tick_label(t)
        draw.text((left - 4 - draw.textlength(text, font=typeface), py - FONT_SIZE / 2 - 2), text, fill=BLACK,
                  font=typeface)
    for t in x_ticks:
        px, _ = to_pixel(t, y_ticks[0])
        draw.line((px, bottom, px, bottom + 4), fill=BLACK)
        text = tick_label(t)
        draw.text((px - draw.textlength(text, font=typeface) / 2, bottom + 5), text, fill=BLACK, font=typeface)
    draw.rectangle(box, outline=BLACK)
    draw.text(((left + right - draw.textlength(x_label, font=typeface)) / 2, bottom + 5 + LINE_HEIGHT), x_label,
              fill=BLACK, font=typeface)


def _legend(draw, typeface, box, labels):
    """A legend of labels (a line in each series' colour, then its label) in the top right corner of box."""
    _, top, right, _ = box
    text_width = max(draw.textlength(label, font=typeface) for label in labels)
    x0 = right - MARGIN - 24 - text_width - 2 * MARGIN
    y0 = top + MARGIN
    draw.rectangle((x0, y0, right - MARGIN, y0 + LINE_HEIGHT * len(labels) + 4), fill=WHITE, outline=GREY)
    for i, (label, colour) in enumerate(zip(labels, SERIES_COLOURS * len(labels))):
        y = y0 + 4 + i * LINE_HEIGHT + LINE_HEIGHT / 2
        draw.line((x0 + 6, y, x0 + 26, y), fill=colour, width=2)
        draw.text((x0 + 30, y - FONT_SIZE / 2 - 2), label, fill=BLACK, font=typeface)
