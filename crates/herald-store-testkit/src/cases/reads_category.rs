//! Category reads: the global log filtered to streams named `category-...`.

use herald_core::{EventStore, ExpectedVersion, ReadQuery};

use crate::Capabilities;
use crate::support::*;

fn cat(c: &str) -> ReadQuery {
    ReadQuery::category(c)
}

async fn fixture(store: &Store) {
    // positions:   1          2          3           4          5         6          7
    for (name, n) in [
        ("order-1", 0),
        ("order-2", 1),
        ("orders-1", 2),
        ("order-1", 3),
        ("order", 4),
        ("ord-1", 5),
        ("order-3-x", 6),
    ] {
        append(store, name, vec![event("E", n)]).await;
    }
}

/// A category read gives events of `order-1`, `order-2`, ... in global position order, each with its own
/// stream and version.
pub async fn category_collects_its_streams_in_position_order(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    let read = read(&store, cat("order")).await;
    assert_eq!(ns(&read), vec![0, 1, 3, 4, 6]);
    assert_eq!(positions(&read), vec![1, 2, 4, 5, 7]);
    let places: Vec<_> = read
        .iter()
        .map(|e| (e.stream.as_str(), e.version))
        .collect();
    assert_eq!(
        places,
        vec![
            ("order-1", 0),
            ("order-2", 0),
            ("order-1", 1),
            ("order", 0),
            ("order-3-x", 0)
        ]
    );
}

/// `orders-1` is not in category `order`, and `ord-1` is not either: the category is the whole part
/// before the first `-`.
pub async fn category_is_the_whole_part_before_the_first_dash(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    let read_orders = read(&store, cat("orders")).await;
    assert_eq!(ns(&read_orders), vec![2]);
    assert_eq!(ns(&read(&store, cat("ord")).await), vec![5]);
    assert!(
        read(&store, cat("order"))
            .await
            .iter()
            .all(|e| e.stream != "orders-1")
    );
}

/// A stream name without `-` is its own category.
pub async fn name_without_dash_is_its_own_category(store: Store, _caps: Capabilities) {
    append_n(&store, "plain", 2).await;
    append_n(&store, "plainer", 1).await;
    let read = read(&store, cat("plain")).await;
    assert_eq!(read.len(), 2);
    assert!(read.iter().all(|e| e.stream == "plain"));
}

/// An unknown category reads as empty.
pub async fn unknown_category_is_empty(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    assert!(read(&store, cat("nothing")).await.is_empty());
    assert!(read(&store, cat("nothing").backward()).await.is_empty());
}

/// Category reads go backward, honour an inclusive position `from`, and limits.
pub async fn category_backward_from_and_limit(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    assert_eq!(
        positions(&read(&store, cat("order").backward()).await),
        vec![7, 5, 4, 2, 1]
    );
    assert_eq!(
        positions(&read(&store, cat("order").from(4)).await),
        vec![4, 5, 7]
    );
    assert_eq!(
        positions(&read(&store, cat("order").from(3)).await),
        vec![4, 5, 7],
        "from a position outside the category starts at the next one inside"
    );
    assert_eq!(
        positions(&read(&store, cat("order").backward().from(6)).await),
        vec![5, 4, 2, 1]
    );
    assert_eq!(
        positions(&read(&store, cat("order").limit(2)).await),
        vec![1, 2]
    );
    assert_eq!(
        positions(&read(&store, cat("order").backward().from(5).limit(2)).await),
        vec![5, 4]
    );
    assert!(read(&store, cat("order").from(8)).await.is_empty());
}

/// Paging a category in small batches over sparse matches skips and repeats nothing.
pub async fn category_paging_over_sparse_matches(store: Store, _caps: Capabilities) {
    for i in 0..40 {
        let name = if i % 4 == 0 {
            format!("cat-{i}")
        } else {
            format!("dog-{i}")
        };
        append(&store, &name, vec![event("E", i)]).await;
    }
    let want: Vec<u64> = (0..40).filter(|i| i % 4 == 0).collect();
    for batch in [1, 3, 10] {
        assert_eq!(ns(&read(&store, cat("cat").batch_size(batch)).await), want);
        let mut back = want.clone();
        back.reverse();
        assert_eq!(
            ns(&read(&store, cat("cat").backward().batch_size(batch)).await),
            back
        );
    }
    let page = store.read_page(&cat("cat").batch_size(3)).await.unwrap();
    assert_eq!(ns(&page), vec![0, 4, 8]);
}

/// A category read keeps a deleted stream's events.
pub async fn category_keeps_deleted_streams_events(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    store
        .delete_stream(&stream("order-1"), ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!(ns(&read(&store, cat("order")).await), vec![0, 1, 3, 4, 6]);
}

/// Category names are exact and case-sensitive: `Order` is not `order`.
pub async fn category_names_are_case_sensitive(store: Store, _caps: Capabilities) {
    append_n(&store, "Order-1", 1).await;
    append_n(&store, "order-1", 2).await;
    assert_eq!(read(&store, cat("Order")).await.len(), 1);
    assert_eq!(read(&store, cat("order")).await.len(), 2);
}

/// Categories with characters special to SQL `LIKE` or globs (`%`, `_`, `*`) match literally.
pub async fn category_special_characters_match_literally(store: Store, _caps: Capabilities) {
    for name in ["a%-1", "ab-1", "a_-1", "a*-1", "axb-1"] {
        append_n(&store, name, 1).await;
    }
    for c in ["a%", "a_", "a*"] {
        let read = read(&store, cat(c)).await;
        assert_eq!(read.len(), 1, "category {c}");
        assert_eq!(read[0].stream, format!("{c}-1"));
    }
}

/// Unicode category names work.
pub async fn unicode_categories(store: Store, _caps: Capabilities) {
    append_n(&store, "zamówienie-1", 1).await;
    append_n(&store, "注文-2", 2).await;
    assert_eq!(read(&store, cat("zamówienie")).await.len(), 1);
    assert_eq!(read(&store, cat("注文")).await.len(), 2);
}
