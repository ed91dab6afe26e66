// Appended to page_select.wgsl when the page table is built by its own kernel.

fn finish_row(t: u32, b: u32, row: u32) {}
