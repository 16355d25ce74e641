//! The HTML pages: the upload page (inline CSS and JavaScript, no external assets) and the
//! result page of its JavaScript-free form post, which inlines the image as a data URL (a
//! PNG of it for the formats browsers do not show). On the upload page a format the
//! browser cannot show has no preview.

use base64::Engine as _;

use crate::engine::Prediction;
use crate::preprocess;

pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Class names from label files often use underscores (`Egyptian_cat`); show spaces.
pub fn display_label(label: &str) -> String {
    label.replace('_', " ")
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem} .muted{color:#666;font-size:.9rem}
form{margin:1rem 0} img#preview,img.result{max-width:100%;max-height:22rem;display:block;margin:1rem 0;border-radius:6px}
.bar{display:flex;align-items:center;margin:.3rem 0} .bar .name{width:13rem} .bar .track{flex:1;background:#eee;border-radius:4px;height:1rem;margin:0 .5rem}
.bar .fill{background:#3b82f6;height:1rem;border-radius:4px} .bar .pct{width:4rem;text-align:right;font-variant-numeric:tabular-nums}
.error{color:#b91c1c} button{font-size:1rem;padding:.3rem 1rem}
"#;

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        title = escape_html(title)
    )
}

fn bars(predictions: &[Prediction]) -> String {
    predictions
        .iter()
        .map(|p| {
            let pct = p.score * 100.0;
            format!(
                "<div class=\"bar\"><span class=\"name\">{}</span><span class=\"track\"><span class=\"fill\" style=\"width:{pct:.1}%;display:block\"></span></span><span class=\"pct\">{pct:.1}%</span></div>",
                escape_html(&display_label(&p.label))
            )
        })
        .collect()
}

/// The upload page for the served `models` (the default first; with several, the page has a
/// picker). Where the server needs an API key, the page asks for it and sends it as
/// `X-API-Key` (kept for the browser tab only, in `sessionStorage`).
pub fn upload_page(models: &[String], needs_key: bool) -> String {
    let key_field = if needs_key {
        r#"<input id="key" type="password" placeholder="API key" autocomplete="off" required>"#
    } else {
        ""
    };
    let (model_line, picker) = match models {
        [one] => (format!("Model: {}. ", escape_html(one)), String::new()),
        _ => (
            String::new(),
            format!(
                "<label>Model <select id=\"model\" name=\"model\">{}</select></label>",
                models
                    .iter()
                    .map(|m| format!("<option>{}</option>", escape_html(m)))
                    .collect::<String>()
            ),
        ),
    };
    let body = format!(
        r#"<h1>Image classifier</h1>
<p class="muted">{model_line}Images are classified in memory and never stored.</p>
<form id="form" method="post" action="/" enctype="multipart/form-data">
  {key_field}
  {picker}
  <input id="file" type="file" name="file" accept="image/*" required>
  <button type="submit">Classify</button>
</form>
<img id="preview" alt="" hidden>
<h2 id="label"></h2>
<div id="result"></div>
<p id="error" class="error"></p>
<script>
const form = document.getElementById('form'), file = document.getElementById('file');
const preview = document.getElementById('preview'), result = document.getElementById('result');
const label = document.getElementById('label'), error = document.getElementById('error');
const key = document.getElementById('key'), model = document.getElementById('model');
if (key) key.value = sessionStorage.getItem('classify-key') || '';
const esc = s => s.replace(/[&<>"']/g, c => ({{'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}})[c]);
file.addEventListener('change', () => {{
  if (!file.files[0]) return;
  preview.onerror = () => {{ preview.hidden = true; }};
  preview.src = URL.createObjectURL(file.files[0]); preview.hidden = false;
  label.textContent = ''; result.innerHTML = ''; error.textContent = '';
}});
form.addEventListener('submit', async (ev) => {{
  ev.preventDefault();
  if (!file.files[0]) return;
  const data = new FormData(); data.append('file', file.files[0]);
  label.textContent = 'Classifying…'; result.innerHTML = ''; error.textContent = '';
  try {{
    const headers = {{}};
    if (key) {{ sessionStorage.setItem('classify-key', key.value); headers['X-API-Key'] = key.value; }}
    const url = model ? '/predict?model=' + encodeURIComponent(model.value) : '/predict';
    const r = await fetch(url, {{method: 'POST', body: data, headers}});
    const j = await r.json();
    if (!r.ok) throw new Error(j.error || r.statusText);
    label.textContent = j.class_name.replace(/_/g, ' ');
    result.innerHTML = j.predictions.map(p => {{
      const pct = (p.score * 100).toFixed(1);
      return `<div class="bar"><span class="name">${{esc(p.label.replace(/_/g, ' '))}}</span><span class="track"><span class="fill" style="width:${{pct}}%;display:block"></span></span><span class="pct">${{pct}}%</span></div>`;
    }}).join('');
  }} catch (e) {{ label.textContent = ''; error.textContent = e.message; }}
}});
</script>"#
    );
    page("Image classifier", &body)
}

/// Longest side of a preview the server draws itself (see [`preview_data_url`]).
const PREVIEW_SIDE: u32 = 1024;

/// The uploaded image as a `data:` URL a browser shows: the bytes as sent for the formats
/// browsers display, else (TIFF, Netpbm) a PNG of the decoded pixels, at most
/// [`PREVIEW_SIDE`] on its longest side. `None` if it cannot be drawn.
fn preview_data_url(image: &[u8]) -> Option<String> {
    use image::ImageFormat::{Bmp, Gif, Jpeg, Png, WebP};
    let shown = match image::guess_format(image) {
        Ok(Png) => Some("image/png"),
        Ok(Jpeg) => Some("image/jpeg"),
        Ok(Gif) => Some("image/gif"),
        Ok(WebP) => Some("image/webp"),
        Ok(Bmp) => Some("image/bmp"),
        _ => None,
    };
    let (mime, bytes) = match shown {
        Some(mime) => (mime, std::borrow::Cow::Borrowed(image)),
        None => {
            let rgb = preprocess::decode_rgb(image, preprocess::DEFAULT_MAX_PIXELS).ok()?;
            let scale = f64::from(PREVIEW_SIDE) / f64::from(rgb.width().max(rgb.height()));
            let small = if scale < 1.0 {
                let side = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
                image::imageops::thumbnail(&rgb, side(rgb.width()), side(rgb.height()))
            } else {
                rgb
            };
            let mut png = std::io::Cursor::new(Vec::new());
            small.write_to(&mut png, image::ImageFormat::Png).ok()?;
            ("image/png", std::borrow::Cow::Owned(png.into_inner()))
        }
    };
    let base64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    Some(format!("data:{mime};base64,{base64}"))
}

pub fn result_page(model: &str, image: &[u8], predictions: &[Prediction]) -> String {
    let picture = preview_data_url(image).map_or_else(String::new, |url| {
        format!("<img class=\"result\" src=\"{url}\" alt=\"uploaded image\">")
    });
    let name = predictions
        .first()
        .map(|p| display_label(&p.label))
        .unwrap_or_default();
    let body = format!(
        "<h1>Image classifier</h1><p class=\"muted\">Model: {model}</p>\
         {picture}<h2 id=\"label\">{name}</h2><div id=\"result\">{bars}</div>\
         <p><a href=\"/\">Classify another image</a></p>",
        model = escape_html(model),
        name = escape_html(&name),
        bars = bars(predictions)
    );
    page(&format!("{name} - Image classifier"), &body)
}

pub fn error_page(message: &str) -> String {
    page(
        "Error - Image classifier",
        &format!(
            "<h1>Image classifier</h1><p class=\"error\">{}</p><p><a href=\"/\">Try another image</a></p>",
            escape_html(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_shows_spaces() {
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let preds = vec![Prediction {
            index: 285,
            label: "Egyptian_cat".into(),
            wnid: None,
            score: 0.5,
        }];
        let html = result_page("m", b"\x89PNG\r\n\x1a\n", &preds);
        assert!(html.contains("<h2 id=\"label\">Egyptian cat</h2>"));
        assert!(html.contains("src=\"data:image/png;base64,"));
        assert!(!result_page("m", b"not an image", &preds).contains("<img"));
        let one = |m: &str| vec![m.to_string()];
        assert!(!upload_page(&one("<m>"), false).contains("<m>"));
        assert!(!upload_page(&one("m"), false).contains("id=\"key\""));
        assert!(!upload_page(&one("m"), false).contains("<select"));
        assert!(upload_page(&one("m"), true).contains("id=\"key\" type=\"password\""));
        let two = upload_page(&["a".into(), "<b>".into()], false);
        assert!(two.contains("<select id=\"model\" name=\"model\"><option>a</option><option>&lt;b&gt;</option></select>"));
    }

    #[test]
    fn formats_browsers_cannot_show_are_previewed_as_png() {
        let preds = [Prediction {
            index: 1,
            label: "goldfish".into(),
            wnid: None,
            score: 1.0,
        }];
        let preview = |bytes: &[u8]| {
            let html = result_page("m", bytes, &preds);
            let (_, rest) = html.split_once("src=\"data:image/png;base64,").unwrap();
            let png = base64::engine::general_purpose::STANDARD
                .decode(&rest[..rest.find('"').unwrap()])
                .unwrap();
            image::load_from_memory(&png).unwrap().into_rgb8()
        };
        // A 3x2 PPM comes back as the same pixels; a wide one is drawn at most 1024 wide.
        let ppm = b"P6\n3 2\n255\n\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12";
        let small = preview(ppm);
        assert_eq!(small.dimensions(), (3, 2));
        assert_eq!(small.as_raw(), &ppm[11..]);
        let wide = [b"P5\n3000 10\n255\n".as_slice(), &[128; 30_000]].concat();
        assert_eq!(preview(&wide).dimensions(), (1024, 3));
    }
}
