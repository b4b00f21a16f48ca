/* Acknowledgement tracking: a delivery report counts only for the send, and the batch, it was
 * made in. The worker's dead-letter messages use it: a late report of a dropped batch must never
 * mark an entry of the next batch delivered (that batch's offsets would be stored before the
 * broker acknowledged its dead-lettered message). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "acks.h"

static void test_report_marks_its_own_entry(void **state)
{
    (void)state;
    us_acks a;
    assert_int_equal(us_acks_init(&a, 4), 0);
    size_t i0 = us_acks_add(&a), i1 = us_acks_add(&a);
    void *t0 = us_acks_send(&a, i0), *t1 = us_acks_send(&a, i1);
    assert_int_equal(us_acks_report(&a, t1, 1), 0);
    assert_int_equal(us_acks_state(&a, i0), US_ACK_PENDING);
    assert_int_equal(us_acks_state(&a, i1), US_ACK_DELIVERED);
    assert_int_equal(us_acks_report(&a, t0, 0), 0);
    size_t pending, failed;
    us_acks_count(&a, &pending, &failed);
    assert_int_equal(pending, 0);
    assert_int_equal(failed, 1);
    us_acks_free(&a);
}

static void test_late_report_of_a_dropped_batch_does_not_mark_the_next_batch(void **state)
{
    (void)state;
    us_acks a;
    assert_int_equal(us_acks_init(&a, 4), 0);
    void *old = us_acks_send(&a, us_acks_add(&a)); /* batch 1, slot 0: sent, then dropped */
    us_acks_reset(&a);
    size_t i = us_acks_add(&a); /* batch 2 reuses slot 0 */
    us_acks_send(&a, i);
    assert_int_equal(us_acks_report(&a, old, 1), -1);
    assert_int_equal(us_acks_state(&a, i), US_ACK_PENDING);
    assert_int_equal(us_acks_report(&a, old, 0), -1);
    assert_int_equal(us_acks_state(&a, i), US_ACK_PENDING);
    us_acks_free(&a);
}

static void test_failed_entry_sent_again_is_pending_until_its_new_report(void **state)
{
    (void)state;
    us_acks a;
    assert_int_equal(us_acks_init(&a, 2), 0);
    size_t i = us_acks_add(&a);
    assert_int_equal(us_acks_report(&a, us_acks_send(&a, i), 0), 0);
    assert_int_equal(us_acks_state(&a, i), US_ACK_FAILED);
    void *again = us_acks_send(&a, i);
    assert_int_equal(us_acks_state(&a, i), US_ACK_PENDING);
    assert_int_equal(us_acks_report(&a, again, 1), 0);
    assert_int_equal(us_acks_state(&a, i), US_ACK_DELIVERED);
    us_acks_free(&a);
}

static void test_report_for_an_entry_not_added_is_ignored(void **state)
{
    (void)state;
    us_acks a;
    assert_int_equal(us_acks_init(&a, 4), 0);
    size_t i = us_acks_add(&a);
    void *t = us_acks_send(&a, i);
    us_acks_reset(&a); /* the new batch has no entries yet */
    assert_int_equal(us_acks_report(&a, t, 1), -1);
    assert_int_equal(a.n, 0);
    us_acks_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_marks_its_own_entry),
        cmocka_unit_test(test_late_report_of_a_dropped_batch_does_not_mark_the_next_batch),
        cmocka_unit_test(test_failed_entry_sent_again_is_pending_until_its_new_report),
        cmocka_unit_test(test_report_for_an_entry_not_added_is_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
