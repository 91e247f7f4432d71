//! Which features a party reads, and under which names.

/// The features one party reads from its data, in model order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    /// The example id feature (bytes in tf.Example; a column in CSV).
    pub id: String,
    /// The label feature (leader only).
    pub label: Option<String>,
    /// The optional loss mask feature: rows with mask 1 do not count
    /// (weight `1 - mask`). Absent in a record means 0.
    pub loss_mask: Option<String>,
    /// Sparse slots, in the model's order. Every record must have every
    /// slot (possibly with an empty list).
    pub slots: Vec<String>,
    /// Dense columns, in the model's order; one value each.
    pub dense: Vec<String>,
    /// Per slot, the table size when ids outside `[0, vocab)` must be
    /// refused at read time (with file and record in the error); `None`
    /// accepts any id (hashed slots). Empty means no checks.
    pub vocab: Vec<Option<u64>>,
}

impl Schema {
    /// A schema with the original's feature names (`example_id`, `y`,
    /// `loss_mask`).
    pub fn new(slots: Vec<String>, dense: Vec<String>, with_label: bool) -> Self {
        Schema {
            id: "example_id".into(),
            label: with_label.then(|| "y".into()),
            loss_mask: with_label.then(|| "loss_mask".into()),
            slots,
            dense,
            vocab: Vec::new(),
        }
    }
}
