/**
 * One number for a case, honestly: the mean Dice over every class that is in the truth OR the
 * prediction. A class the model invents (none in the truth, some predicted) has Dice 0 and
 * counts; a class missed counts with Dice 0 too; a class in neither is left out. The older
 * "mean over the classes present in the truth" ignores invented classes (phantom 101: 0.80 with
 * 2.4 mL of SDH predicted where there was none; 0.54 counted this way), so it is kept beside the
 * headline, never instead of it.
 */
import { invalidParameterError } from "../is.js";
import type { CaseMetrics } from "./evaluate.js";

export interface DiceHeadline {
  /** The headline: mean Dice over the classes in the truth or the prediction (NaN when neither has any). */
  meanDice: number;
  /** The classes that mean is over. */
  classes: number[];
  /** Mean Dice over the classes in the truth only (ignores invented classes; NaN when the truth has none). */
  meanDiceTruth: number;
  truthClasses: number[];
  /** Classes predicted where the truth has none (false-positive classes; each scores Dice 0 in the headline). */
  falsePositiveClasses: number[];
  /** Classes in the truth of which nothing was predicted. */
  missedClasses: number[];
}

export function diceHeadline(m: CaseMetrics): DiceHeadline {
  if (typeof m !== "object" || m === null || !Array.isArray(m.classes) || typeof m.perClass !== "object" || m.perClass === null) {
    throw invalidParameterError("metrics", "the result of evaluate() ({ classes, perClass, … })", m);
  }
  const row = (c: number) => {
    const r = m.perClass[String(c)];
    if (!r) throw invalidParameterError(`metrics.perClass["${c}"]`, "the class's metrics", r);
    return r;
  };
  const inTruth = (c: number) => row(c).tp + row(c).fn > 0;
  const inPred = (c: number) => row(c).tp + row(c).fp > 0;
  const classes = m.classes.filter((c) => inTruth(c) || inPred(c));
  const truthClasses = m.classes.filter(inTruth);
  // a class in only one of the two has no overlap: Dice 0 (evaluate already gives 0 there)
  const dice = (c: number) => (inTruth(c) && inPred(c) ? row(c).dice : 0);
  const mean = (cs: number[]) => (cs.length ? cs.reduce((a, c) => a + dice(c), 0) / cs.length : NaN);
  return {
    meanDice: mean(classes),
    classes,
    meanDiceTruth: mean(truthClasses),
    truthClasses,
    falsePositiveClasses: m.classes.filter((c) => inPred(c) && !inTruth(c)),
    missedClasses: m.classes.filter((c) => inTruth(c) && !inPred(c)),
  };
}
