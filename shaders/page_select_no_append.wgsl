// Appended to page_select.wgsl when the new K and V rows go by their own kernel.

fn append_row(t: u32, b: u32, kvh: u32) {}
