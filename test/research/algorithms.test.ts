/**
 * Value transformations against the published vectors of Microsoft FHIR Tools for Anonymization
 * (FHIR/src/Microsoft.Health.Fhir.Anonymizer.Shared.Core.UnitTests @ 4ba9fcd7, MIT) and its docs.
 */
import { createDecipheriv } from 'node:crypto';
import fc from 'fast-check';
import { getResourceTypes } from '@medplum/core';
import {
  cryptoHash,
  dateShiftOffset,
  encrypt,
  perturb,
  redactAge,
  redactDate,
  redactPostalCode,
  roundHalfEven,
  shiftDate,
  transformReferenceId,
} from '../../src/research/deid/algorithms.js';
import { ensureR4Schemas } from '../../src/research/deid/tree.js';

const KEY = '123';
const NOW = new Date('2025-06-01T00:00:00Z');

beforeAll(() => ensureR4Schemas());

describe('cryptoHash (CryptoHashUtilityTests, CryptoHashProcessorTests)', () => {
  it.each([
    ['', ''],
    ['abc', '8f16771f9f8851b26f4d460fa17de93e2711c7e51337cb8a608a0f81e1c1b6ae'],
    ['&*^%$@()=-,/', '33f6f7d6b3602bf5354dcb4b8d988982602349355f50f86798d8ce1ffd61521b'],
    ['ÆŊŋßſ♫∅', '1a94823f0a0f00a4b1ca771c3446dc5e17958f4dae3588ace2bca8a843eb63d9'],
    ['abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ1234567890!@#$%^&*()=-', '352b5a4af5adb81fa616c2a5b5c492d0b0b544c188a9aa003767a2b5efbd1478'],
    ['a', '69e99e82127c1f146f50653e02b92c4bb0c3bc182a6165a5bbce5f4f94e1ccb7'],
    ['bb6f4872-e456-42d5-a9da-a0d82cb7ea29', '73defcb8fcaf4c0c3d5c77f05b479cadbe502db2ef6e9b1523d2bfee31f3b999'],
    ['urn:oid:1.2.3.4.5', '6aa8e3e9af18cae990adc9c26dc006ebf633dd1332886867a691ee2d5247dd15'],
    ['2020-04-12', '1e99c6a8b99d3c8b4906c2e80911ad3b5961fd7498d3bc2b96fb128bc7148f90'],
  ])('HMAC-SHA256(%j) under key 123', (input, expected) => {
    expect(cryptoHash(input, KEY)).toBe(expected);
  });

  it.each([
    ['', ''],
    ['#', '#'],
    ['#p1', '#a10e6bee4fbeb6a7804153c25688dd4dd7b9c2a005417136026350fc33ac609f'],
    ['Patient/example', 'Patient/698d54f0494528a759f19c8e87a9f99e75a5881b9267ee3926bcf62c992d84ba'],
    [
      'http://fhir.hl7.org/svc/StructureDefinition/c8973a22-2b5b-4e76-9c66-00639c99e61b',
      'http://fhir.hl7.org/svc/StructureDefinition/b0ff9c939b3507a79e2ae3d2d3b595d62819b9b8f6ef10d4099b3058d902642f',
    ],
    ['http://example.org/fhir/Observation/apo89654/_history/2', 'http://example.org/fhir/Observation/b1e85ca33baf76575ad28588af85b8f10c0dd40e9ed8cd57cdb7ae94ccd75695/_history/2'],
    ['urn:uuid:c757873d-ec9a-4326-a141-556f43239520', 'urn:uuid:24970eb3f915e516a2b5241c0d6979097a6357a13b89612c6a54b8ab5479df34'],
    ['urn:oid:1.2.3.4.5', 'urn:oid:0543fb50485f58a47073f51aad1677607aec031c2c83c25ee7b040ade95cfbcc'],
  ])('reference %j keeps its type prefix', (input, expected) => {
    expect(transformReferenceId(input, (s) => cryptoHash(s, KEY), getResourceTypes())).toBe(expected);
  });

  it('a resource id and a reference to it hash to the same id (Patient/x ↔ id x)', () => {
    const id = cryptoHash('example', KEY);
    expect(transformReferenceId('Patient/example', (s) => cryptoHash(s, KEY), getResourceTypes())).toBe(`Patient/${id}`);
  });
});

describe('dateShift (DateTimeUtilityTests)', () => {
  const offset = dateShiftOffset('dummy', '');
  it.each([
    ['date', '2015-02-07', '2015-01-17'],
    ['dateTime', '2015-02-07', '2015-01-17'],
    ['dateTime', '2015-02-07T13:28:17-05:00', '2015-01-17T00:00:00-05:00'],
    ['dateTime', '2015-02-07T13:28:17+05:00', '2015-01-17T00:00:00+05:00'],
    ['dateTime', '2015-02-07T13:28:17Z', '2015-01-17T00:00:00Z'],
    ['dateTime', '2015-02-07T13:28:17.12345-05:00', '2015-01-17T00:00:00.00000-05:00'],
    ['instant', '2015-02-07T13:28:17-05:00', '2015-01-17T00:00:00-05:00'],
  ] as const)('%s %s with key "dummy" → %s', (kind, input, expected) => {
    expect(shiftDate(input, kind, offset, true, NOW)).toEqual({ value: expected, op: 'perturb' });
  });

  it('offsets stay in [-50, 50] and depend on key and prefix', () => {
    fc.assert(
      fc.property(fc.string(), fc.string(), (key, prefix) => {
        const o = dateShiftOffset(key, prefix);
        return Number.isInteger(o) && o >= -50 && o <= 50;
      }),
    );
    const offsets = new Set(Array.from({ length: 50 }, (_, i) => dateShiftOffset('key', `patient-${i}`)));
    expect(offsets.size).toBeGreaterThan(20);
  });

  it('the same prefix shifts every date by the same amount (GivenADate_WhenDateShiftWithSamePrefix)', () => {
    const o = dateShiftOffset('123', 'filename');
    const days = (a: string, b: string): number => (Date.parse(b) - Date.parse(a)) / 86_400_000;
    for (const d of ['2015-02-07', '2020-01-17', '1998-10-02', '1975-12-26']) {
      expect(days(d, shiftDate(d, 'date', o, true, NOW).value!)).toBe(o);
    }
  });

  it('dates without a day, or indicating an age over 89, are redacted instead', () => {
    expect(shiftDate('2015-02', 'date', offset, true, NOW)).toEqual({ value: '2015', op: 'redact' });
    expect(shiftDate('1925-02-07', 'date', offset, true, NOW)).toEqual({ value: null, op: 'redact' });
    expect(shiftDate('1925-02-07T13:28:17-05:00', 'dateTime', offset, true, NOW)).toEqual({ value: null, op: 'redact' });
    expect(shiftDate('2015-02', 'dateTime', offset, false, NOW)).toEqual({ value: null, op: 'redact' });
  });

  it('a shift that would leave years 0001–9999 redacts instead of writing a date that is not FHIR', () => {
    // "9999-12-31" is the usual "no end date"; 40 days later used to come out as "10000-02-09".
    expect(shiftDate('9999-12-31', 'date', 40, true, NOW)).toEqual({ value: '9999', op: 'redact' });
    expect(shiftDate('9999-12-31T23:59:59Z', 'dateTime', 40, true, NOW)).toEqual({ value: '9999', op: 'redact' });
    expect(shiftDate('9999-12-31', 'date', 40, false, NOW)).toEqual({ value: null, op: 'redact' });
    expect(shiftDate('9999-12-31', 'date', -40, true, NOW)).toEqual({ value: '9999-11-21', op: 'perturb' });
  });
});

describe('partial redaction (enablePartial*ForRedact)', () => {
  it.each([
    ['2015', '2015'],
    ['2015-02', '2015'],
    ['2015-02-07', '2015'],
    ['1925-02-07', null],
  ])('date %s → %s', (input, expected) => {
    expect(redactDate(input, 'date', true, NOW).value).toBe(expected);
    expect(redactDate(input, 'date', false, NOW).value).toBeNull();
  });

  it.each([
    ['2015-02-07T13:28:17-05:00', '2015'],
    ['1925-02-07T13:28:17-05:00', null],
  ])('dateTime %s → %s', (input, expected) => {
    expect(redactDate(input, 'dateTime', true, NOW).value).toBe(expected);
  });

  it('the 89-year threshold is relative to now (birthday not yet reached → still 89)', () => {
    const now = new Date('2025-06-01T00:00:00Z');
    expect(redactDate('1935-06-02', 'date', true, now).value).toBe('1935'); // 89
    expect(redactDate('1935-06-01', 'date', true, now).value).toBeNull(); // 90
  });

  it('ages over 89 are redacted; others kept', () => {
    expect(redactAge(92, true)).toBeNull();
    expect(redactAge(57, true)).toBe(57);
    expect(redactAge(35, false)).toBeNull();
  });

  it.each([
    ['98052', '98000'],
    ['10104', '10100'],
    ['20301', '00000'],
    ['55602', '00000'],
    ['98028-1830', '98000-0000'],
    ['20301-1830', '00000-0000'],
  ])('postal code %s → %s (restricted 203, 556)', (input, expected) => {
    expect(redactPostalCode(input, ['203', '556'])).toBe(expected);
  });
});

describe('encrypt', () => {
  it('is AES-CBC with a random IV prepended, base64; decrypts with the key', () => {
    const key = '0123456789abcdef0123456789abcdef';
    const a = encrypt('Seattle', key);
    const b = encrypt('Seattle', key);
    expect(a).not.toBe(b);
    const raw = Buffer.from(a, 'base64');
    const d = createDecipheriv('aes-256-cbc', Buffer.from(key), raw.subarray(0, 16));
    expect(Buffer.concat([d.update(raw.subarray(16)), d.final()]).toString('utf8')).toBe('Seattle');
  });
});

describe('perturb', () => {
  it('stays within the documented ranges and rounds', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 120 }), (age) => {
        const fixed = perturb(age, 'decimal', 6, 'fixed', 0);
        const prop = perturb(age, 'decimal', 0.2, 'proportional', 0);
        return Math.abs(fixed - age) <= 3 && Math.abs(prop - age) <= Math.ceil(age * 0.1) + 0.5 && Number.isInteger(fixed);
      }),
    );
    expect(perturb(1, 'positiveInt', 100, 'fixed', undefined)).toBeGreaterThanOrEqual(1);
    expect(perturb(0, 'unsignedInt', 100, 'fixed', undefined)).toBeGreaterThanOrEqual(0);
  });

  it('rounds half to even like .NET decimal.Round', () => {
    expect(roundHalfEven(2.5, 0)).toBe(2);
    expect(roundHalfEven(3.5, 0)).toBe(4);
    expect(roundHalfEven(1.234, 2)).toBe(1.23);
  });
});
